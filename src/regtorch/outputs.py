"""The output folder of ``regtorch fit --out DIR``, written as one transaction.

Everything is built in a staging folder beside DIR (``.DIR.staging-<pid>-<random>``, same
parent, so the same file system), then swapped in with one atomic rename: Linux's
``renameat2(RENAME_EXCHANGE)`` where available, otherwise ``DIR -> .DIR.backup-<pid>-<random>``
then ``staging -> DIR``. Whatever instant the process dies at, DIR is wholly the old folder or
wholly the new one, or (between the two fallback renames) absent with its backup beside it;
the next run restores such a backup, and removes the staging folders and backups that dead
runs left.

A lock (``fcntl.flock`` on ``.DIR.lock`` beside DIR), taken before the fit and held until the
swap, keeps two runs from writing the same DIR: the second fails at once, naming the first.

DIR is replaced only if it is absent, empty, or holds nothing but files regtorch writes (with
``force`` when it holds an earlier fit's outputs). A folder holding other files, the current
folder or one of its parents, a folder containing the input data, and a symbolic link are
refused: replacing them would delete what regtorch did not write.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regtorch._files import umask
from regtorch._lock import lock_file, unlock_file

__all__ = [
    "InterruptedFit",
    "OutputFolderError",
    "OutputLockedError",
    "claim_output",
    "held",
    "write_folder",
]

MODEL_FILE = "model.safetensors"
# every name `regtorch fit --out` writes: a folder holding only these is an output folder
OUTPUT_FILES = frozenset(
    {
        MODEL_FILE,
        "metrics.json",
        "loss_curves.png",
        "pred_vs_true.png",
        "residuals.png",
        "cv_error.png",
        "coef_path.png",
        "report.html",
    }
)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


class OutputFolderError(ValueError):
    """The ``--out`` folder cannot be (re)placed: named, with the reason."""


class OutputLockedError(OutputFolderError):
    """Another regtorch run is writing the same ``--out`` folder."""


class InterruptedFit(Exception):  # noqa: N818 - names the outcome, as KeyboardInterrupt does
    """Ctrl-C stopped the fit; the message says what was (or was not) written."""


@dataclass
class Claim:
    """A locked destination, checked before the fit."""

    dest: Path  # absolute
    fd: int  # the open lock file, flock'ed
    lock_path: Path
    had_model: bool  # DIR held a model.safetensors when it was checked


_HELD: dict[Path, Claim] = {}


def _abs(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.abspath(path))


def _names(dest: Path) -> tuple[Path, str, str]:
    """The lock file, and the prefixes of staging folders and backups, beside ``dest``."""
    return (
        dest.parent / f".{dest.name}.lock",
        f".{dest.name}.staging-",
        f".{dest.name}.backup-",
    )


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _check_place(dest: Path, shown: str, inputs: Sequence[str | os.PathLike[str]]) -> None:
    """Refuse destinations whose replacement would destroy what regtorch did not write."""
    if not dest.name or dest == dest.parent:
        raise OutputFolderError(f"--out {shown} is the root folder; give a new folder.")
    if dest.is_symlink():
        raise OutputFolderError(
            f"--out {shown} is a symbolic link (to {os.readlink(dest)}); regtorch replaces the "
            "whole folder, so give the real folder or a new one."
        )
    real = Path(os.path.realpath(dest))
    cwd = Path(os.path.realpath(os.getcwd()))
    if _within(cwd, real):
        raise OutputFolderError(
            f"--out {shown} is the current folder or contains it; regtorch replaces the whole "
            "--out folder, so give a new subfolder (e.g. --out results)."
        )
    for item in inputs:
        if _within(Path(os.path.realpath(item)), real):
            raise OutputFolderError(
                f"--out {shown} contains the input data {item}; regtorch replaces the whole "
                "--out folder, so give another folder."
            )
    if dest.exists() and not dest.is_dir():
        raise OutputFolderError(f"--out {shown} is a file; give a folder.")


def _lock(lock_path: Path, shown: str) -> int:
    """Open and flock ``lock_path`` without waiting; fail naming the holder's pid."""

    def busy(holder: str) -> OutputLockedError:
        return OutputLockedError(
            f"--out {shown} is being written by another regtorch run (pid {holder}); wait "
            "for it or choose another --out."
        )

    def fail(reason: str) -> OutputLockedError:
        return OutputLockedError(f"--out {shown}: {reason}.")

    return lock_file(lock_path, busy, fail)


def _recover(dest: Path) -> None:
    """Under the lock: restore a backup a dead run left, remove its leftovers."""
    _, staging, backup = _names(dest)

    def ours(prefix: str, name: str) -> bool:
        # `<prefix><pid>-<random>` exactly: `.out.staging-` also begins the staging folders
        # of a sibling named `out.staging-1`, which its own lock protects
        return re.fullmatch(re.escape(prefix) + r"[0-9]+-[A-Za-z0-9_]+", name) is not None

    mine = f"{staging}{os.getpid()}-"
    leftovers = sorted(dest.parent.glob(".*"), key=lambda p: p.name)
    leftovers = [p for p in leftovers if p.is_dir() and not p.is_symlink()]
    backups = [p for p in leftovers if ours(backup, p.name)]
    if backups and not os.path.lexists(dest):
        # killed between `DIR -> backup` and `staging -> DIR`: the old folder comes back
        _rename(backups.pop(), dest)
    for p in backups:
        shutil.rmtree(p, ignore_errors=True)
    for p in leftovers:
        if ours(staging, p.name) and not p.name.startswith(mine):
            # every writer holds the lock while its staging folder exists, and the lock is
            # ours: its writer died (a reused pid could look alive, so the pid is not asked)
            shutil.rmtree(p, ignore_errors=True)


def _inspect(dest: Path, shown: str, force: bool) -> bool:
    """Refuse a folder with other files, or an earlier fit's without ``force``; True if it
    holds a model."""
    if not dest.is_dir():
        return False
    names = sorted(os.listdir(dest))
    foreign = [n for n in names if n not in OUTPUT_FILES]
    if foreign:
        listed = ", ".join(foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        raise OutputFolderError(
            f"--out {shown} holds files regtorch did not write ({listed}); regtorch replaces the "
            "whole folder, so give a new or empty folder."
        )
    if names and not force:
        what = dest / MODEL_FILE if MODEL_FILE in names else dest / names[0]
        raise OutputFolderError(
            f"{shown_path(what, dest, shown)} exists; use --force to replace it."
        )
    return MODEL_FILE in names


def shown_path(path: Path, dest: Path, shown: str) -> str:
    """``path`` spelled from the ``--out`` the user typed."""
    return str(Path(shown) / path.relative_to(dest))


def acquire(
    dest: str | os.PathLike[str], *, force: bool, inputs: Sequence[str | os.PathLike[str]] = ()
) -> Claim:
    """Check ``dest``, lock it, and tidy what dead runs left beside it."""
    shown = str(dest)
    d = _abs(dest)
    if d in _HELD:
        raise OutputLockedError(
            f"--out {shown} is being written by another regtorch run (pid {os.getpid()}); "
            "wait for it or choose another --out."
        )
    _check_place(d, shown, inputs)
    try:
        d.parent.mkdir(parents=True, exist_ok=True)
        lock_path = _names(d)[0]
        fd = _lock(lock_path, shown)
    except OSError as exc:
        raise OutputFolderError(
            f"--out {shown}: cannot write in {d.parent} ({exc.strerror or exc}); regtorch builds "
            "the new folder beside the old one, so its parent folder must be writable."
        ) from exc
    try:
        _recover(d)
        _check_place(d, shown, inputs)  # a restored backup is checked like any folder
        had_model = _inspect(d, shown, force)
    except BaseException:
        unlock_file(fd, lock_path)
        raise
    claim = Claim(d, fd, lock_path, had_model)
    _HELD[d] = claim
    return claim


def release(claim: Claim) -> None:
    """Unlock the destination."""
    _HELD.pop(claim.dest, None)
    unlock_file(claim.fd, claim.lock_path)


@contextlib.contextmanager
def claim_output(
    dest: str | os.PathLike[str] | None,
    *,
    force: bool,
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> Iterator[Claim | None]:
    """Check and lock ``dest`` for the duration (nothing for None, or a rank other than 0,
    which never writes)."""
    if dest is None or int(os.environ.get("RANK", "0") or 0) != 0:
        yield None
        return
    claim = acquire(dest, force=force, inputs=inputs)
    try:
        yield claim
    finally:
        release(claim)


def held(dest: str | os.PathLike[str]) -> Claim | None:
    """This process's claim on ``dest``, if any."""
    return _HELD.get(_abs(dest))


# ---------------------------------------------------------------- the swap


def _libc_renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries atomically; False where the system cannot."""
    fn = _libc_renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # the file system (or kernel < 3.15) has no exchange
    raise OSError(err, os.strerror(err), str(b))


def _rename(a: Path, b: Path) -> None:
    os.rename(a, b)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(stage: Path) -> None:
    """Put the staged files on disk before they become visible under DIR."""
    for f in stage.iterdir():
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(stage)


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C back for the few system calls of the swap."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda sig, frame: got.append(sig))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if got:
        raise KeyboardInterrupt


def _swap(stage: Path, dest: Path) -> None:
    """Make ``stage`` be ``dest``; the old ``dest`` ends up in ``stage``'s place or deleted."""
    if not os.path.lexists(dest):
        _rename(stage, dest)
    elif not _exchange(stage, dest):
        backup = dest.parent / f"{_names(dest)[2]}{os.getpid()}-{secrets.token_hex(4)}"
        _rename(dest, backup)
        try:
            _rename(stage, dest)
        except BaseException:
            _rename(backup, dest)
            raise
        shutil.rmtree(backup, ignore_errors=True)
    _fsync_dir(dest.parent)


def _commit(claim: Claim, build: Callable[[Path], None]) -> None:
    dest = claim.dest
    existed = dest.is_dir()
    mode = (dest.stat().st_mode & 0o7777) if existed else (0o777 & ~umask())
    stage = Path(tempfile.mkdtemp(prefix=f"{_names(dest)[1]}{os.getpid()}-", dir=dest.parent))
    try:
        build(stage)
        _fsync_tree(stage)
        os.chmod(stage, mode)  # mkdtemp's 0o700 would hide the folder from the group
        with _sigint_deferred():
            _swap(stage, dest)
    except OSError as exc:
        kept = "the previous folder is unchanged" if existed else "nothing was written"
        raise OutputFolderError(
            f"could not write --out {dest} ({exc.strerror or exc}); {kept}."
        ) from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # the staging, or the old folder after a swap


def write_folder(
    dest: str | os.PathLike[str],
    build: Callable[[Path], None],
    *,
    force: bool = False,
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> Path:
    """Replace the folder ``dest`` by what ``build(stage)`` writes into an empty folder.

    Uses this process's claim on ``dest`` (:func:`claim_output`) or takes one for the call.
    """
    claim = held(dest)
    if claim is not None:
        _commit(claim, build)
        return claim.dest
    with claim_output(dest, force=force, inputs=inputs) as c:
        assert c is not None
        _commit(c, build)
        return c.dest
