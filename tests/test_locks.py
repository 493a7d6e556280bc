"""Two runs writing one checkpoint or one CSV log: the second is refused, the first's files
stay whole, and the lock never outlives its run (errors, Ctrl-C, kill -9)."""

from __future__ import annotations

import copy
import errno
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from sklearn.base import clone

from regtorch import MLPRegressor
from regtorch._lock import FileLockedError, PathLock
from regtorch.nn.callbacks import Checkpoint, CSVLogger
from regtorch.nn.loop import Callback, TrainingDivergedError, train
from regtorch.nn.modules import LinearModule

X = torch.linspace(-1, 1, 64).reshape(-1, 1)
Y = 2 * X + 1


def _train(callbacks: list[Callback], epochs: int = 3, **kw: object) -> object:
    return train(LinearModule(1), X, Y, epochs=epochs, seed=0, lr=0.05, callbacks=callbacks, **kw)


class _During(Callback):
    """Runs ``fn`` at the end of the first epoch (while the other callbacks hold their locks)."""

    def __init__(self, fn):
        self.fn, self.result = fn, None

    def on_epoch_end(self, state):
        if self.result is None:
            try:
                self.fn()
                self.result = "ran"
            except Exception as exc:  # noqa: BLE001 - the test inspects it
                self.result = exc


@pytest.mark.parametrize("kind", ["checkpoint", "csv"])
def test_a_second_fit_on_the_same_file_is_refused_while_the_first_runs(tmp_path, kind):
    path = tmp_path / ("c.safetensors" if kind == "checkpoint" else "log.csv")

    def make() -> Callback:
        return Checkpoint(path, every=1) if kind == "checkpoint" else CSVLogger(path)

    during = _During(lambda: _train([make()], epochs=1))
    _train([make(), during], epochs=4)
    assert isinstance(during.result, FileLockedError)
    msg = str(during.result)
    assert str(path) in msg and "another fit in this process" in msg
    if kind == "csv":  # the refused run did not truncate or add to the first one's rows
        rows = path.read_text().splitlines()
        assert [r.split(",")[0] for r in rows] == ["epoch", "1", "2", "3", "4"]
    else:
        from regtorch.nn.checkpoint import load_checkpoint

        assert load_checkpoint(path)["epoch"] == 4
    # the lock went with the first run: the same file can be written again
    _train([make()], epochs=2)
    assert not (tmp_path / f".{path.name}.lock").exists()


def test_another_process_holding_the_lock_is_named(tmp_path):
    path = tmp_path / "c.safetensors"
    lock = tmp_path / ".c.safetensors.lock"
    holder = (
        "import fcntl, os, sys\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, f'{os.getpid()}\\n'.encode())\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with pytest.raises(FileLockedError, match=rf"another regtorch run \(pid {proc.pid}\)"):
            _train([Checkpoint(path, every=1)])
        assert not path.exists()  # refused before any epoch: nothing written
    finally:
        proc.kill()  # kill -9: the kernel releases the lock; its file stays behind
        proc.wait()
    assert lock.exists()
    _train([Checkpoint(path, every=1)])  # a lock file left by a dead run does not block
    assert path.exists() and not lock.exists()


class _Boom(Callback):
    def on_epoch_end(self, state):
        raise RuntimeError("boom")


def test_locks_are_released_when_an_error_stops_training(tmp_path):
    ck, log = tmp_path / "c.safetensors", tmp_path / "log.csv"
    # a callback's error
    with pytest.raises(RuntimeError, match="boom"):
        _train([Checkpoint(ck, every=1), CSVLogger(log), _Boom()])
    # a lock refused to a later callback, after an earlier one took its own
    blocker = PathLock(log, "test")
    blocker.acquire()
    with pytest.raises(FileLockedError):
        _train([Checkpoint(ck, every=1), CSVLogger(log)])
    blocker.release()
    # divergence
    with pytest.raises(TrainingDivergedError):
        train(
            LinearModule(1), X * 1e20, Y, epochs=5, seed=0, lr=1e10,
            callbacks=[Checkpoint(ck, every=1), CSVLogger(log)],
        )  # fmt: skip
    for p in (ck, log):
        assert not (tmp_path / f".{p.name}.lock").exists()
    _train([Checkpoint(ck, every=1), CSVLogger(log)])  # nothing still held


def test_ctrl_c_releases_the_locks(tmp_path):
    ck = tmp_path / "c.safetensors"

    class _CtrlC(Callback):
        def on_epoch_end(self, state):
            if state.epoch == 1:
                raise KeyboardInterrupt

    hist = _train([Checkpoint(ck, every=1), _CtrlC()], epochs=5)
    assert hist.interrupted
    assert not (tmp_path / ".c.safetensors.lock").exists()
    _train([Checkpoint(ck, every=1)], epochs=5, resume_from=ck)


def test_a_checkpoint_in_a_new_folder_still_works(tmp_path):
    path = tmp_path / "new" / "sub" / "c.safetensors"  # saves create the folders, as before
    _train([Checkpoint(path, every=1)])
    assert path.is_file() and not (path.parent / ".c.safetensors.lock").exists()


def test_copies_never_share_a_held_lock(tmp_path):
    ck = Checkpoint(tmp_path / "c.safetensors", every=2)
    log = CSVLogger(tmp_path / "log.csv")

    class _Copy(Callback):
        def on_epoch_end(self, state):
            self.copies = [copy.deepcopy(ck), copy.deepcopy(log)]

    grab = _Copy()
    _train([ck, log, grab], epochs=1)
    c_ck, c_log = grab.copies
    assert (c_ck.path, c_ck.every, c_log.path) == (ck.path, 2, log.path)
    c_ck.close()  # a copy made while the original held the lock must not release it
    c_log.close()
    assert c_ck._lock is None and c_log._lock is None


def test_estimators_refuse_a_checkpoint_another_fit_is_writing(tmp_path):
    path = tmp_path / "c.safetensors"
    rng = torch.Generator().manual_seed(0)
    Xn = torch.randn(200, 2, generator=rng).numpy()
    yn = Xn.sum(1)
    est = MLPRegressor((4,), max_epochs=3, random_state=0, checkpoint_path=str(path))
    blocker = PathLock(path, "test")
    blocker.acquire()
    try:
        with pytest.raises(FileLockedError, match="Checkpoint"):
            clone(est).fit(Xn, yn)
    finally:
        blocker.release()
    clone(est).fit(Xn, yn)
    assert path.exists()


def test_a_planted_symbolic_link_as_the_lock_is_not_followed(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    os.symlink(victim, tmp_path / ".c.safetensors.lock")
    with pytest.raises(FileLockedError, match="lock"):
        _train([Checkpoint(tmp_path / "c.safetensors", every=1)])
    assert victim.read_text() == "keep me\n"


def test_cli_second_run_on_one_checkpoint_is_refused(tmp_path):
    """Two `regtorch fit` processes, one --checkpoint: the second exits with the reason."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    Xd = rng.normal(size=(4000, 2))
    pd.DataFrame({"a": Xd[:, 0], "b": Xd[:, 1], "y": Xd.sum(1)}).to_csv(tmp_path / "d.csv")
    ck = tmp_path / "ck.safetensors"
    holder = PathLock(ck, "test")  # stands for the first run (this process's pid)
    holder.acquire()
    try:
        cmd = [sys.executable, "-m", "regtorch", "fit", str(tmp_path / "d.csv"), "--target", "y"]
        cmd += ["--model", "mlp", "--epochs", "2", "--checkpoint", str(ck)]
        proc = subprocess.run(
            [*cmd, "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300
        )
    finally:
        holder.release()
    assert proc.returncode == 2, proc.stderr
    assert f"another regtorch run (pid {os.getpid()})" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not Path(tmp_path / "o").exists()


# ---------------------------------------------------------------- found in review


@pytest.mark.skipif(not os.path.isdir("/dev/fd"), reason="needs /dev/fd")
def test_csv_log_to_a_dev_fd_path_still_works():
    """``--log-csv >(tee log)`` or ``--log-csv /dev/stdout`` name a file in /dev/fd or /dev,
    where no lock file can be created; the log used to be written, now training is refused
    ("cannot create its lock file /dev/fd/.N.lock")."""
    with tempfile.TemporaryFile("w+") as f:
        path = f"/dev/fd/{f.fileno()}"
        _train([CSVLogger(path)], epochs=2)
        f.seek(0)
        rows = f.read().splitlines()
    assert [r.split(",")[0] for r in rows] == ["epoch", "1", "2"]


def test_a_second_run_writing_the_same_csv_through_a_symlink_is_refused(tmp_path):
    """The lock is keyed on the path as spelled, so a symbolic link to the file being written
    gets its own lock: the second run truncates the first one's log and their rows mix."""
    real = tmp_path / "log.csv"
    real.write_text("")
    link = tmp_path / "link.csv"
    os.symlink(real, link)
    during = _During(lambda: _train([CSVLogger(link)], epochs=1))
    _train([CSVLogger(real), during], epochs=3)
    assert isinstance(during.result, Exception), "the second run was not refused"
    rows = real.read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["epoch", "1", "2", "3"]


def test_one_checkpoint_instance_in_two_concurrent_fits_keeps_the_first_ones_lock(tmp_path):
    """The same Checkpoint object passed to a second fit while the first runs: its
    on_train_begin calls close(), releasing (and unlinking) the first fit's lock, then takes
    a new one; the second fit is not refused and the first runs on without any lock."""
    path = tmp_path / "c.safetensors"
    cb = Checkpoint(path, every=1)
    seen: list[bool] = []

    class _Peek(Callback):
        def on_epoch_end(self, state):
            if state.epoch >= 1:  # after the nested fit ended
                seen.append((tmp_path / ".c.safetensors.lock").exists())

    during = _During(lambda: _train([cb], epochs=1))
    _train([cb, during, _Peek()], epochs=4)
    assert isinstance(during.result, Exception), "the second fit was not refused"
    assert seen and all(seen), "the first fit lost its lock while still writing"


class _Every5(Checkpoint):
    def __init__(self, path):
        super().__init__(path, every=5)


class _Tagged(Checkpoint):
    def __init__(self, path, every=10, tag="default"):
        super().__init__(path, every)
        self.tag = tag


def test_checkpoint_subclasses_survive_clone(tmp_path):
    """Checkpoint.__deepcopy__ rebuilds ``type(self)(path, every)``: a subclass with another
    signature breaks sklearn's clone (TypeError), one with extra settings loses them. Both
    worked before the commit (the default deepcopy)."""
    est = MLPRegressor(callbacks=[_Every5(tmp_path / "a.safetensors")])
    cb = clone(est).callbacks[0]
    assert isinstance(cb, _Every5) and cb.every == 5
    tagged = copy.deepcopy(_Tagged(tmp_path / "b.safetensors", 3, "run1"))
    assert (tagged.every, tagged.tag) == (3, "run1")


def test_a_failed_lock_write_does_not_leave_the_lock_held(tmp_path, monkeypatch):
    """An OSError after the flock (the pid's write hitting ENOSPC or EDQUOT) leaks the open,
    locked descriptor: every later fit on that file in this process is refused ("another
    regtorch run (pid unknown)") although no run is writing it."""
    path = tmp_path / "c.safetensors"
    real_pwrite = os.pwrite

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(ValueError):
        _train([Checkpoint(path, every=1)])
    monkeypatch.setattr(os, "pwrite", real_pwrite)  # the disk has room again
    _train([Checkpoint(path, every=1)])
    assert Path(path).is_file()


def test_a_pipe_is_written_without_a_lock():
    r, w = os.pipe()
    try:
        _train([CSVLogger(f"/dev/fd/{w}")], epochs=2)
        os.close(w)
        w = -1
        with os.fdopen(r) as f:
            r = -1
            rows = f.read().splitlines()
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
    assert [row.split(",")[0] for row in rows] == ["epoch", "1", "2"]


def test_a_folder_without_locks_warns_and_writes(tmp_path, monkeypatch):
    """EACCES (a folder one may not write in, as a non-root user), ENOLCK (a file system
    without flock): no lock is possible, the file is written as before, with a warning."""
    import regtorch._lock as lk
    from regtorch.exceptions import RegtorchWarning

    for code in (errno.EACCES, errno.ENOLCK):

        def refuse(*args, code=code):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(lk, "lock_file", refuse)
        path = tmp_path / f"log{code}.csv"
        with pytest.warns(RegtorchWarning, match="cannot lock it"):
            _train([CSVLogger(path)], epochs=2)
        assert len(path.read_text().splitlines()) == 3


def test_a_callback_whose_close_raises_does_not_keep_the_others_locks(tmp_path):
    ck = tmp_path / "c.safetensors"

    class _BadClose(Callback):
        def close(self):
            raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        _train([_BadClose(), Checkpoint(ck, every=1)])
    assert not (tmp_path / ".c.safetensors.lock").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train([Checkpoint(ck, every=1)])
