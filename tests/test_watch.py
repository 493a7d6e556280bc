"""Watching training: CSV and TensorBoard logs, progress lines in log files, the README's
LoggingCallback example, History as a table and a plot, and the CLI's --log-csv/--tensorboard."""

import copy
import io
import logging
import math
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import regtorch.nn.callbacks as cbs
from regtorch.callbacks import CSVLogger, LoggingCallback, ProgressBar, TensorBoardLogger
from regtorch.cli import main
from regtorch.nn.callbacks import Checkpoint
from regtorch.nn.loop import Callback, History, TrainingDivergedError, train

REPO = Path(__file__).resolve().parents[1]


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 3, generator=g)
    y = X.sum(1, keepdim=True) + 0.1 * torch.randn(200, 1, generator=g)
    return X, y


KW = dict(lr=0.02, epochs=12, batch_size=32, seed=3, lr_schedule="cosine")


def _read_csv(path):
    return pd.read_csv(path, keep_default_na=True)


class _StopAt(Callback):
    """Ctrl-C after ``n`` complete epochs."""

    def __init__(self, n):
        self.n = n

    def on_epoch_end(self, state):
        if state.epoch + 1 == self.n:
            raise KeyboardInterrupt


def test_csv_rows_equal_history(data, tmp_path):
    X, y = data
    path = tmp_path / "log.csv"
    h = train(_net(), X, y, X_val=X[:50], y_val=y[:50], callbacks=[CSVLogger(path)], **KW)
    df = _read_csv(path)
    assert list(df.columns) == ["epoch", "train_loss", "val_loss", "lr", "seconds"]
    assert df.epoch.tolist() == list(range(1, 13))
    np.testing.assert_allclose(df.train_loss, h.train_loss, rtol=0, atol=1e-12)
    np.testing.assert_allclose(df.val_loss, h.val_loss, rtol=0, atol=1e-12)
    np.testing.assert_allclose(df.lr, h.lr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(df.seconds, h.time, rtol=0, atol=1e-12)
    assert df.lr.iloc[0] > df.lr.iloc[-1]  # the cosine schedule is recorded


def test_csv_without_validation_leaves_val_empty(data, tmp_path):
    X, y = data
    path = tmp_path / "log.csv"
    train(_net(), X, y, callbacks=[CSVLogger(path)], **{**KW, "epochs": 3})
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and all(line.split(",")[2] == "" for line in lines[1:])


def test_csv_refuses_folder_and_missing_parent(data, tmp_path):
    X, y = data
    with pytest.raises(ValueError, match="is a folder; give a file name"):
        train(_net(), X, y, callbacks=[CSVLogger(tmp_path)], epochs=2)
    with pytest.raises(ValueError, match="does not exist"):
        train(_net(), X, y, callbacks=[CSVLogger(tmp_path / "no" / "log.csv")], epochs=2)


def test_csv_append_and_header_check(data, tmp_path):
    X, y = data
    path = tmp_path / "log.csv"
    train(_net(), X, y, callbacks=[CSVLogger(path)], epochs=2, seed=0)
    train(_net(), X, y, callbacks=[CSVLogger(path, append=True)], epochs=3, seed=0)
    assert _read_csv(path).epoch.tolist() == [1, 2, 1, 2, 3]
    train(_net(), X, y, callbacks=[CSVLogger(path)], epochs=2, seed=0)  # append=False: afresh
    assert _read_csv(path).epoch.tolist() == [1, 2]
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="cannot append, its header is 'a,b'"):
        train(_net(), X, y, callbacks=[CSVLogger(other, append=True)], epochs=2)


def test_csv_keeps_rows_after_ctrl_c_and_divergence(data, tmp_path):
    X, y = data
    path = tmp_path / "log.csv"
    logger = CSVLogger(path)
    h = train(_net(), X, y, callbacks=[logger, _StopAt(4)], **KW)
    assert h.interrupted and logger._file is None  # closed
    assert _read_csv(path).epoch.tolist() == [1, 2, 3, 4]
    logger = CSVLogger(path)
    with pytest.raises(TrainingDivergedError) as exc:
        train(_net(), X, y * 1e30, callbacks=[logger], lr=10.0, epochs=20, seed=0)
    assert logger._file is None
    df = _read_csv(path)
    assert len(df) >= len(exc.value.history)  # the finite epochs are all there


@pytest.mark.parametrize("keep_file", [True, False])
def test_csv_resume_continues_without_duplicates(data, tmp_path, keep_file):
    X, y = data
    val = dict(X_val=X[:50], y_val=y[:50])
    full = train(_net(), X, y, **val, **KW)
    ck, path = tmp_path / "ck.safetensors", tmp_path / "log.csv"
    # checkpoints at epochs 4 and 8; Ctrl-C after 6: the file has rows 5, 6 past the checkpoint
    part = [CSVLogger(path), Checkpoint(ck, every=4), _StopAt(6)]
    train(_net(), X, y, **val, callbacks=part, **KW)
    assert _read_csv(path).epoch.tolist() == list(range(1, 7))
    if keep_file:  # a kill while row 7 was written, cut after its first digit
        path.write_text(path.read_text() + "1")
    else:
        path.unlink()  # the checkpoint's own history fills the first rows
    back = [CSVLogger(path), Checkpoint(ck, every=4)]
    h = train(_net(seed=9), X, y, **val, callbacks=back, resume_from=ck, **KW)
    df = _read_csv(path)
    assert df.epoch.tolist() == list(range(1, 13))
    np.testing.assert_allclose(df.train_loss, full.train_loss, rtol=0, atol=1e-12)
    np.testing.assert_allclose(df.val_loss, h.val_loss, rtol=0, atol=1e-12)
    np.testing.assert_allclose(df.lr, full.lr, rtol=0, atol=1e-12)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_loggers_deep_copy_without_their_files(data, tmp_path):
    X, y = data
    logger = CSVLogger(tmp_path / "log.csv")

    class Copy(Callback):
        def on_epoch_end(self, state):
            self.copied = copy.deepcopy(logger)  # while the file is open

    grab = Copy()
    train(_net(), X, y, callbacks=[logger, grab], epochs=2)
    assert grab.copied._file is None and grab.copied.path == logger.path
    tb = copy.deepcopy(TensorBoardLogger(tmp_path / "tb"))
    assert tb.logdir == tmp_path / "tb" and tb._writer is None


def _scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars_equal_history(data, tmp_path):
    X, y = data
    h = train(
        _net(), X, y, X_val=X[:50], y_val=y[:50], callbacks=[TensorBoardLogger(tmp_path)], **KW
    )
    got = _scalars(tmp_path)
    assert set(got) == {"loss/train", "loss/val", "lr"}
    for tag, ref in (("loss/train", h.train_loss), ("loss/val", h.val_loss), ("lr", h.lr)):
        assert [s for s, _ in got[tag]] == list(range(1, 13))
        np.testing.assert_allclose([v for _, v in got[tag]], ref, rtol=1e-6)  # float32 events


def test_tensorboard_resume_drops_the_interrupted_epochs(data, tmp_path):
    X, y = data
    ck, logdir = tmp_path / "ck.safetensors", tmp_path / "tb"
    full = train(_net(), X, y, **KW)
    train(_net(), X, y, callbacks=[TensorBoardLogger(logdir), Checkpoint(ck, 4), _StopAt(6)], **KW)
    back = [TensorBoardLogger(logdir), Checkpoint(ck, 4)]
    train(_net(seed=9), X, y, callbacks=back, resume_from=ck, **KW)
    got = _scalars(logdir)["loss/train"]
    assert [s for s, _ in got] == list(range(1, 13))
    np.testing.assert_allclose([v for _, v in got], full.train_loss, rtol=1e-6)


def test_tensorboard_missing_package_names_the_extra(data, tmp_path, monkeypatch):
    X, y = data
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ImportError, match=re.escape('pip install "regtorch[tensorboard]"')):
        train(_net(), X, y, callbacks=[TensorBoardLogger(tmp_path)], epochs=2)


LINE = re.compile(r"^demo epoch (\d+)/(\d+) loss \S+ val \S+ \d+\.\ds$")


@pytest.mark.parametrize(
    ("epochs", "every", "shown"),
    [(45, None, [*range(3, 46, 3)]), (7, None, [*range(1, 8)]), (25, 10, [10, 20, 25])],
)
def test_progress_lines_when_stderr_is_no_terminal(data, capfd, epochs, every, shown):
    X, y = data
    capfd.readouterr()
    bar = ProgressBar(every=every, desc="demo")
    train(_net(), X, y, X_val=X[:20], y_val=y[:20], callbacks=[bar], epochs=epochs, seed=0)
    out, err = capfd.readouterr()
    lines = err.splitlines()
    assert out == "" and all(LINE.match(line) for line in lines), err
    assert [int(LINE.match(line)[1]) for line in lines] == shown


def test_progress_line_where_early_stopping_stops(data, capfd):
    X, y = data

    class Stop(Callback):
        def on_epoch_end(self, state):
            state.stop = state.epoch + 1 == 8

    capfd.readouterr()
    train(_net(), X, y, callbacks=[ProgressBar(every=5), Stop()], epochs=100, seed=0)
    err = capfd.readouterr().err
    assert [line.split()[2] for line in err.splitlines()] == ["5/100", "8/100"]


def test_progress_bar_in_a_notebook(data, capfd, monkeypatch):
    X, y = data
    assert not cbs._in_notebook()
    monkeypatch.setitem(sys.modules, "ipykernel", type(sys)("ipykernel"))
    fake = type(sys)("IPython")
    fake.get_ipython = lambda: object()
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert cbs._in_notebook()
    fake.get_ipython = lambda: None  # IPython loaded, but no kernel running
    assert not cbs._in_notebook()
    made = []
    monkeypatch.setattr(cbs, "_in_notebook", lambda: True)
    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", lambda **kw: made.append(kw) or _Bar())
    capfd.readouterr()
    train(_net(), X, y, callbacks=[ProgressBar(desc="nb")], epochs=5, seed=0)
    assert made and made[0]["total"] == 5 and made[0]["desc"] == "nb"
    assert "nb epoch" not in capfd.readouterr().err  # the bar, not plain lines


class _Bar:
    def update(self, n):
        pass

    def set_postfix(self, post, refresh):
        pass

    def close(self):
        pass


@pytest.mark.parametrize("scale", [pytest.param(1, marks=pytest.mark.slow), 10])
def test_readme_logging_example_prints_its_lines(scale, capfd, monkeypatch):
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    code = next(b for b in blocks if "LoggingCallback(every=500)" in b)
    # scale 10: the same example with 10 times fewer epochs, for speed
    code = code.replace("epochs=2000", f"epochs={2000 // scale}")
    code = code.replace("every=500", f"every={500 // scale}")
    # as in a fresh interpreter: no logging set up (pytest's capture handlers aside)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    monkeypatch.setattr(logging.getLogger("regtorch"), "handlers", [])
    capfd.readouterr()
    exec(compile(code, "README.md", "exec"), {})
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    n = 2000 // scale
    assert [line.split()[1] for line in lines] == [f"{k * n // 4}/{n}" for k in range(1, 5)]
    assert all("train_loss" in line and "val_loss" in line for line in lines)


def test_logging_callback_user_handler_gets_lines_once(data, capfd, monkeypatch):
    X, y = data
    root, reg = logging.getLogger(), logging.getLogger("regtorch")
    monkeypatch.setattr(root, "handlers", [])  # pytest's own capture handlers aside
    monkeypatch.setattr(reg, "handlers", [])
    capfd.readouterr()
    train(_net(), X, y, callbacks=[LoggingCallback(every=2)], epochs=4, seed=0)
    assert capfd.readouterr().err.count("train_loss") == 2  # no logging set up: stderr
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    monkeypatch.setattr(reg, "handlers", [handler])
    old = reg.level
    reg.setLevel(logging.INFO)  # setLevel, not setattr: it clears the logger's level cache
    try:
        train(_net(), X, y, callbacks=[LoggingCallback(every=2)], epochs=4, seed=0)
    finally:
        reg.setLevel(old)
    assert sink.getvalue().count("train_loss") == 2
    assert "train_loss" not in capfd.readouterr().err  # the user's handler only, once


def test_history_to_frame(data):
    X, y = data
    h = train(_net(), X, y, X_val=X[:50], y_val=y[:50], **KW)
    df = h.to_frame()
    assert df.index.name == "epoch" and df.index.tolist() == list(range(1, 13))
    assert list(df.columns) == ["train_loss", "val_loss", "lr", "time"]
    assert df.train_loss.tolist() == h.train_loss and df.val_loss.tolist() == h.val_loss
    assert df.lr.tolist() == h.lr and df.time.tolist() == h.time
    plain = History(train_loss=[2.0, 1.0], time=[0.1, 0.2], lr=[0.1, 0.1]).to_frame()
    assert list(plain.columns) == ["train_loss", "lr", "time"] and not plain.isna().any().any()
    assert History().to_frame().shape == (0, 3)


def test_history_plot_marks_the_best_epoch():
    import matplotlib.pyplot as plt

    h = History(
        train_loss=[4.0, 2.0, 1.0, 0.5], val_loss=[4.0, 1.5, 1.0, 1.2], time=[0.1] * 4, lr=[0.1] * 4
    )
    fig, ax = plt.subplots()
    assert h.plot(ax=ax) is ax
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert lines["train"].get_ydata().tolist() == h.train_loss
    assert lines["validation"].get_ydata().tolist() == h.val_loss
    best = lines["best epoch 3"]
    assert best.get_xdata().tolist() == [3] and best.get_ydata().tolist() == [1.0]
    assert ax.get_yscale() == "log"
    ax2 = History(train_loss=[1.0, -1.0], time=[0, 0], lr=[1, 1]).plot(log=True)
    assert ax2.get_yscale() == "linear"  # a negative loss: no log scale
    assert [line.get_label() for line in ax2.get_lines()] == ["train", "best epoch 2"]
    plt.close("all")


# --- the command line ---------------------------------------------------------------------


def cli(monkeypatch, capsys, *args):
    """Run ``regtorch`` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main replaces it
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"])
    df["y"] = df.a - 2 * df.b + 0.1 * rng.normal(size=300)
    path = tmp_path_factory.mktemp("watch") / "t.csv"
    df.to_csv(path, index=False)
    return path


MLP = ("--model", "mlp", "--hidden", "8", "--epochs", "6", "--batch-size", "64", "--target", "y")


def _needs_callbacks_param():
    from regtorch import MLPRegressor

    if "callbacks" not in MLPRegressor().get_params():
        pytest.skip("MLPRegressor(callbacks=...) is not there yet")


@pytest.mark.parametrize("stream", [False, True])
def test_cli_log_csv(table, tmp_path, monkeypatch, capsys, stream):
    _needs_callbacks_param()
    log = tmp_path / "log.csv"
    extra = ("--stream",) if stream else ()
    code, _, err = cli(monkeypatch, capsys, "fit", table, *MLP, "--log-csv", log, *extra)
    assert code == 0, err
    df = _read_csv(log)
    assert df.epoch.tolist() == list(range(1, 7))
    assert np.isfinite(df[["train_loss", "val_loss", "lr", "seconds"]].to_numpy()).all()
    code, _, err = cli(monkeypatch, capsys, "fit", table, *MLP, "--log-csv", log, *extra)
    assert code == 2 and "the file exists; pass --force" in err
    code, _, err = cli(monkeypatch, capsys, "fit", table, *MLP, "--log-csv", log, "--force")
    assert code == 0, err
    assert _read_csv(log).epoch.tolist() == list(range(1, 7))


def test_cli_log_csv_continues_on_resume(table, tmp_path, monkeypatch, capsys):
    _needs_callbacks_param()
    log, ck = tmp_path / "log.csv", tmp_path / "run.ckpt"
    args = ("fit", table, *MLP, "--log-csv", log, "--checkpoint", ck)
    assert cli(monkeypatch, capsys, *args)[0] == 0
    first = _read_csv(log)
    assert cli(monkeypatch, capsys, *args)[0] == 0  # resumes from the finished checkpoint
    pd.testing.assert_frame_equal(_read_csv(log), first)


def test_cli_tensorboard(table, tmp_path, monkeypatch, capsys):
    _needs_callbacks_param()
    tb = tmp_path / "tb"
    code, _, err = cli(monkeypatch, capsys, "fit", table, *MLP, "--tensorboard", tb)
    assert code == 0, err
    got = _scalars(tb)
    assert [s for s, _ in got["loss/train"]] == list(range(1, 7)) and "loss/val" in got


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--model", "ridge", "--log-csv", "{d}/log.csv"), "--model ridge fits in one pass"),
        (("--model", "linear", "--tensorboard", "{d}/tb"), "--model linear fits in one pass"),
        ((*MLP, "--log-csv", "{d}"), "is a folder; give a file name"),
        ((*MLP, "--log-csv", "{d}/no/log.csv"), "does not exist"),
        ((*MLP, "--tensorboard", "{d}/file.txt"), "is a file; give a folder"),
        ((*MLP, "--log-csv", "{d}/log.csv", "--out", "{d}", "--force"), "inside --out"),
        ((*MLP, "--tensorboard", "{d}/out/tb", "--out", "{d}/out"), "inside --out"),
    ],
)
def test_cli_refuses_bad_watch_flags(table, tmp_path, monkeypatch, capsys, flags, message):
    (tmp_path / "file.txt").write_text("x")
    args = [f.format(d=tmp_path) for f in flags]
    if "--target" not in args:
        args += ["--target", "y"]
    code, _, err = cli(monkeypatch, capsys, "fit", table, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_cli_tensorboard_missing_package(table, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    code, _, err = cli(monkeypatch, capsys, "fit", table, *MLP, "--tensorboard", tmp_path / "t")
    assert code == 2 and 'pip install "regtorch[tensorboard]"' in err, err


def test_seconds_grow(data, tmp_path):
    X, y = data
    path = tmp_path / "log.csv"
    train(_net(), X, y, callbacks=[CSVLogger(path)], epochs=5, seed=0)
    s = _read_csv(path).seconds.tolist()
    assert all(b >= a for a, b in zip(s, s[1:])) and all(math.isfinite(v) for v in s)


def test_only_rank_zero_writes_or_prints(data, tmp_path, capfd, monkeypatch):
    from regtorch import distributed

    X, y = data
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    capfd.readouterr()
    watch = [CSVLogger(tmp_path / "log.csv"), TensorBoardLogger(tmp_path / "tb")]
    shown = [ProgressBar(every=1), LoggingCallback(every=1)]
    train(_net(), X, y, callbacks=[*watch, *shown], epochs=3, seed=0)
    assert not (tmp_path / "log.csv").exists() and not (tmp_path / "tb").exists()
    assert capfd.readouterr().err == ""


def test_mlp_regressor_callbacks_clone_and_verbose_lines(tmp_path, capfd):
    _needs_callbacks_param()
    from sklearn.base import clone

    from regtorch import MLPRegressor

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 2))
    y = X[:, 0] - X[:, 1]
    est = MLPRegressor((8,), max_epochs=40, random_state=0, verbose=True)
    est.set_params(callbacks=[CSVLogger(tmp_path / "log.csv")])
    capfd.readouterr()
    est.fit(X, y)
    twin = clone(est)  # the logger is copied, its (closed) file is not shared
    assert twin.callbacks[0] is not est.callbacks[0] and twin.callbacks[0]._file is None
    df = _read_csv(tmp_path / "log.csv")
    assert df.epoch.tolist() == list(range(1, len(est.history_) + 1))
    np.testing.assert_allclose(df.train_loss, est.history_.train_loss, rtol=0, atol=1e-12)
    lines = [line for line in capfd.readouterr().err.splitlines() if "epoch" in line]
    assert lines and all(line.startswith("MLPRegressor epoch ") for line in lines)
    assert lines[-1].split()[2] == f"{len(est.history_)}/40"
