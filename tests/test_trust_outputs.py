"""`fit --out DIR` as one transaction: crashes at each step, two runs at once, Ctrl-C, hostile
destinations, a full disk. After anything, DIR is wholly the old folder or wholly the new one."""

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pandas as pd
import pytest

import regtorch
from regtorch import outputs
from regtorch.cli import main
from regtorch.outputs import OutputFolderError, OutputLockedError, claim_output
from tests.test_trust_modelfile import interrupt_after

LINEAR_FILES = [
    "metrics.json",
    "model.safetensors",
    "pred_vs_true.png",
    "report.html",
    "residuals.png",
]
MLP_FILES = sorted([*LINEAR_FILES, "loss_curves.png"])
MLP = ["--model", "mlp", "--epochs", "6", "--hidden", "8", "--batch-size", "16", "--val-size", "0"]


@pytest.fixture
def csv(tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(120, 3)), columns=["a", "b", "c"])
    df["y"] = df.a - 2 * df.b + 0.1 * rng.normal(size=120)
    path = tmp_path / "data" / "t.csv"
    path.parent.mkdir()
    df.to_csv(path, index=False)
    return path


@pytest.fixture(autouse=True)
def _restore_showwarning(monkeypatch):
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)


def fit(csv, dest, *extra):
    return main(["fit", str(csv), "--target", "y", "--out", str(dest), *extra])


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def leftovers(dest):
    """Lock files, staging folders and backups beside ``dest``."""
    return sorted(p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}."))


def is_new_mlp(dest):
    """The folder is wholly the MLP fit's: its files, a loadable MLP, its metrics."""
    assert sorted(os.listdir(dest)) == MLP_FILES
    assert type(regtorch.load(dest)).__name__ == "MLPRegressor"
    return json.loads((dest / "metrics.json").read_text())["model"] == "MLPRegressor"


# ---------------------------------------------------------------- crashes (kill -9) at each step

CRASH = textwrap.dedent(
    """
    import os, sys
    import regtorch.outputs as o

    step = sys.argv[1]
    real_exchange, real_rename, calls = o._exchange, o._rename, []

    def die():
        os._exit(9)

    def exchange(a, b):
        if step == "exchange-before":
            die()
        if step.startswith("fallback"):
            return False
        real_exchange(a, b)
        die()

    def rename(a, b):
        calls.append(1)
        if step == "fallback-before":
            die()
        real_rename(a, b)
        if (step, len(calls)) in {("fallback-first", 1), ("fallback-second", 2)}:
            die()

    o._exchange, o._rename = exchange, rename
    if step == "build":
        o._fsync_tree = lambda stage: die()
    from regtorch.cli import main

    sys.exit(main(sys.argv[2:]))
    """
)


@pytest.mark.parametrize(
    "step, after_crash, after_recovery",
    [
        ("build", "old", "old"),  # staging complete, nothing swapped
        ("exchange-before", "old", "old"),
        ("exchange-after", "new", "new"),  # the old folder sits in the staging name
        ("fallback-before", "old", "old"),  # renameat2 unavailable: two renames
        ("fallback-first", "missing", "old"),  # DIR -> backup done: the backup comes back
        ("fallback-second", "new", "new"),  # both renames done, the backup not yet deleted
    ],
)
def test_killed_at_each_step_the_folder_is_wholly_old_or_wholly_new(
    csv, tmp_path, step, after_crash, after_recovery
):
    dest = tmp_path / "out"
    assert fit(csv, dest) == 0
    old = snapshot(dest)
    args = ["fit", str(csv), "--target", "y", "--out", str(dest), "--force", *MLP]
    proc = subprocess.run(
        [sys.executable, "-c", CRASH, step, *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 9, proc.stderr  # it died where it was told to
    assert leftovers(dest), "a crash leaves its staging folder or backup"

    def state():
        if not dest.exists():
            return "missing"
        if snapshot(dest) == old:
            return "old"
        assert is_new_mlp(dest)
        return "new"

    assert state() == after_crash
    with claim_output(dest, force=True):  # a later run: restores and tidies under the lock
        pass
    assert state() == after_recovery
    assert leftovers(dest) == []


def test_a_later_fit_restores_the_backup_before_checking_for_force(csv, tmp_path, capsys):
    dest = tmp_path / "out"
    assert fit(csv, dest) == 0
    old = snapshot(dest)
    args = ["fit", str(csv), "--target", "y", "--out", str(dest), "--force", *MLP]
    proc = subprocess.run(
        [sys.executable, "-c", CRASH, "fallback-first", *args], capture_output=True, timeout=300
    )
    assert proc.returncode == 9 and not dest.exists()
    assert fit(csv, dest) == 2  # the restored folder is an earlier fit: --force is needed
    assert "out/model.safetensors exists; use --force" in capsys.readouterr().err
    assert snapshot(dest) == old and leftovers(dest) == []


def test_stale_staging_folders_and_backups_are_removed(csv, tmp_path):
    dest = tmp_path / "out"
    assert fit(csv, dest) == 0
    for name in (".out.staging-999999-abc", ".out.backup-999999-def"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"junk")
    # a sibling folder `out.staging-1`'s own staging folder is not ours to remove
    (tmp_path / ".out.staging-1.staging-5-abc").mkdir()
    assert fit(csv, dest, "--force") == 0
    assert leftovers(dest) == [".out.staging-1.staging-5-abc"]
    assert sorted(os.listdir(dest)) == LINEAR_FILES


def test_renameat2_exchange_swaps_two_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    if not outputs._exchange(a, b):
        pytest.skip("this file system has no RENAME_EXCHANGE")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


# ---------------------------------------------------------------- stale files, permissions


def test_a_linear_refit_over_an_mlp_folder_leaves_no_loss_curves(csv, tmp_path):
    dest = tmp_path / "out"
    assert fit(csv, dest, *MLP) == 0
    assert is_new_mlp(dest)
    assert fit(csv, dest, "--force") == 0
    assert sorted(os.listdir(dest)) == LINEAR_FILES  # no loss_curves.png of the MLP
    assert type(regtorch.load(dest)).__name__ == "LinearRegression"


def test_outputs_get_the_usual_permissions_and_a_refit_keeps_the_folders(csv, tmp_path):
    dest = tmp_path / "out"
    old = os.umask(0o022)
    try:
        assert fit(csv, dest) == 0
        assert dest.stat().st_mode & 0o777 == 0o755
        assert {p.stat().st_mode & 0o777 for p in dest.iterdir()} == {0o644}
        dest.chmod(0o750)
        assert fit(csv, dest, "--force") == 0
    finally:
        os.umask(old)
    assert dest.stat().st_mode & 0o777 == 0o750
    assert {p.stat().st_mode & 0o777 for p in dest.iterdir()} == {0o644}


# ---------------------------------------------------------------- two runs at once


def test_a_second_run_on_a_locked_out_fails_fast_naming_the_first(csv, tmp_path, capsys):
    dest = tmp_path / "out"
    with claim_output(dest, force=True):  # the first run, in the middle of its fit
        proc = subprocess.run(
            [sys.executable, "-m", "regtorch", "fit", csv, "--target", "y", "--out", dest],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 2
        assert (
            f"regtorch: error: --out {dest} is being written by another regtorch run "
            f"(pid {os.getpid()}); wait for it or choose another --out." in proc.stderr
        )
        # flock belongs to the open file description: a second one conflicts in-process too
        fd = os.open(tmp_path / ".out.lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        with pytest.raises(OutputLockedError, match="being written by another regtorch run"):
            outputs.acquire(tmp_path / "." / "out", force=True)
        assert fit(csv, dest) == 2
        assert "is being written by another regtorch run" in capsys.readouterr().err
        assert not dest.exists()
    assert leftovers(dest) == []
    assert fit(csv, dest) == 0  # released


def test_two_fits_started_together_never_both_write(csv, tmp_path):
    dest = tmp_path / "out"
    cmd = [sys.executable, "-m", "regtorch", "fit", str(csv), "--target", "y", "--out", str(dest)]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], errs
    err = next(e for p, e in zip(procs, errs) if p.returncode == 2)
    assert "being written by another regtorch run" in err or "exists; use --force" in err
    assert sorted(os.listdir(dest)) == LINEAR_FILES and leftovers(dest) == []


# ---------------------------------------------------------------- Ctrl-C


@pytest.mark.parametrize("n", [0, 3])
def test_ctrl_c_never_replaces_an_earlier_model(csv, tmp_path, monkeypatch, capsys, n):
    dest = tmp_path / "out"
    assert fit(csv, dest) == 0
    old = snapshot(dest)
    interrupt_after(monkeypatch, n)
    assert fit(csv, dest, "--force", *MLP) == 130
    err = capsys.readouterr().err
    assert f"regtorch: interrupted: the fit stopped after {n} complete epoch" in err
    assert "keeps its earlier model (rerun with --save-interrupted" in err
    assert snapshot(dest) == old and leftovers(dest) == []


@pytest.mark.parametrize("n", [0, 3])
def test_save_interrupted_writes_a_model_that_loads_and_predicts(
    csv, tmp_path, monkeypatch, capsys, n
):
    dest = tmp_path / "out"
    assert fit(csv, dest) == 0
    interrupt_after(monkeypatch, n)
    assert fit(csv, dest, "--force", "--save-interrupted", *MLP) == 130
    assert f"was written to {dest}/, marked interrupted" in capsys.readouterr().err
    est = regtorch.load(dest)
    assert est.n_iter_ == n and est.history_.interrupted
    assert json.loads((dest / "metrics.json").read_text())["interrupted"] is True
    X = pd.read_csv(csv)[["a", "b", "c"]]
    assert np.isfinite(est.predict(X)).all()
    assert main(["predict", str(dest), str(csv), "--out", str(tmp_path / "p.csv")]) == 0
    assert main(["summary", str(dest)]) == 0
    assert main(["evaluate", str(dest), str(csv), "--target", "y", "--json"]) == 0
    assert ("loss_curves.png" in os.listdir(dest)) == (n > 0)


def test_an_interrupted_fit_fills_a_new_folder_marked_interrupted(csv, tmp_path, monkeypatch):
    dest = tmp_path / "new"
    interrupt_after(monkeypatch, 2)
    assert fit(csv, dest, *MLP) == 130
    assert regtorch.load(dest).n_iter_ == 2
    assert json.loads((dest / "metrics.json").read_text())["interrupted"] is True


def test_ctrl_c_while_writing_keeps_the_old_folder(csv, tmp_path, monkeypatch):
    dest = tmp_path / "out"
    assert fit(csv, dest) == 0
    old = snapshot(dest)

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(regtorch.plotting, "plot_residuals", ctrl_c)
    assert fit(csv, dest, "--force", *MLP) == 130
    assert snapshot(dest) == old and leftovers(dest) == []


def test_ctrl_c_during_the_swap_is_held_back_until_it_is_done():
    reached = False
    with pytest.raises(KeyboardInterrupt):
        with outputs._sigint_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            reached = True  # the signal did not stop the block
    assert reached


# ---------------------------------------------------------------- a full disk, hostile places


def test_a_full_disk_keeps_the_old_folder(csv, tmp_path, monkeypatch, capsys):
    dest = tmp_path / "out"
    assert fit(csv, dest) == 0
    old = snapshot(dest)

    def enospc(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(regtorch.plotting, "plot_residuals", enospc)
    assert fit(csv, dest, "--force") == 2
    err = capsys.readouterr().err
    assert f"could not write --out {dest} (No space left on device); the previous folder is " in err
    assert snapshot(dest) == old and leftovers(dest) == []


def test_places_that_must_not_be_replaced_are_refused(csv, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "sub" / "keep.txt").write_text("mine")
    monkeypatch.chdir(work / "sub")
    cases = [
        (".", "--out . is the current folder or contains it"),
        ("..", "--out .. is the current folder or contains it"),
        (str(work / "sub"), "is the current folder or contains it"),
        (str(csv.parent), f"contains the input data {csv}"),
        ("/", "is the root folder"),
    ]
    (work / "link").symlink_to(work / "sub")
    cases.append((str(work / "link"), "is a symbolic link"))
    (work / "file").write_text("x")
    cases.append((str(work / "file"), "is a file; give a folder"))
    (work / "mixed").mkdir()
    (work / "mixed" / "model.safetensors").write_bytes(b"x")
    (work / "mixed" / "notes.txt").write_text("x")
    cases.append((str(work / "mixed"), "holds files regtorch did not write (notes.txt)"))
    for out, msg in cases:
        assert fit(csv, out, "--force") == 2, out
        err = capsys.readouterr().err
        assert msg in err and err.count("regtorch: error:") == 1, (out, err)
    assert (work / "sub" / "keep.txt").read_text() == "mine"
    assert (work / "mixed" / "notes.txt").exists() and csv.exists()
    assert not [p for p in tmp_path.rglob(".*") if ".staging-" in p.name or ".lock" in p.name]


def test_an_empty_folder_is_filled_without_force(csv, tmp_path):
    dest = tmp_path / "empty"
    dest.mkdir()
    assert fit(csv, dest) == 0 and sorted(os.listdir(dest)) == LINEAR_FILES


def test_an_unwritable_parent_is_refused_before_the_fit(csv, tmp_path, monkeypatch, capsys):
    def denied(path, shown):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(outputs, "_lock", denied)
    assert fit(csv, tmp_path / "out") == 2
    out, err = capsys.readouterr()
    assert f"cannot write in {tmp_path} (Permission denied)" in err
    assert "LinearRegression on" not in out  # refused before fitting


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_parent_is_refused_before_the_fit(csv, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert fit(csv, ro / "out") == 2
        assert "cannot write in" in capsys.readouterr().err
    finally:
        ro.chmod(0o755)


def test_a_planted_lock_symlink_is_not_followed(csv, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / ".out.lock").symlink_to(victim)
    with pytest.raises(OutputFolderError, match="cannot write in"):
        outputs.acquire(tmp_path / "out", force=False)
    assert victim.read_text() == "precious"


def test_ranks_other_than_0_take_no_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with claim_output(tmp_path / "out", force=False) as claim:
        assert claim is None
    assert os.listdir(tmp_path) == []
