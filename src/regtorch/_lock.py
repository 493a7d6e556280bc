"""Locks that keep two runs from writing the same file or folder at once.

``fcntl.flock`` on a lock file ``.NAME.lock`` beside the target, taken without waiting: the
second run fails at once, naming the first's pid. The kernel releases the lock when its
holder dies (``kill -9`` included), and the holder unlinks the lock file before releasing
it, so a lock file left behind never blocks a later run. Locks taken twice in one process
(two fits in two threads) conflict too: flock belongs to the open file, not the process.

:class:`PathLock` keys the lock on the file's real path (a symbolic link to it finds the
same lock). Where no lock can be kept (a pipe or terminal such as ``/dev/stdout``, a folder
one may not write in, a file system without flock) it goes on without one, with a warning
for the last two: the file is written as it was before locks existed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import warnings
from collections.abc import Callable
from pathlib import Path

__all__ = ["CallbackInUseError", "FileLockedError", "PathLock", "lock_file", "unlock_file"]


class FileLockedError(ValueError):
    """Another run is writing the same file."""


class CallbackInUseError(FileLockedError):
    """One callback object passed to two fits running at once."""


def lock_file(
    lock_path: Path, busy: Callable[[str], Exception], fail: Callable[[str], Exception]
) -> int:
    """Open and flock ``lock_path`` without waiting; return its descriptor.

    ``busy(holder)`` builds the error raised when another run holds it (``holder``: its pid
    as written in the file, or "unknown"); ``fail(reason)`` the error for a lock that cannot
    be taken (not a file, or replaced again and again).
    """
    for _ in range(20):
        # O_NOFOLLOW: a symbolic link planted as the lock must not make us truncate its target
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise fail(f"its lock {lock_path} is not a file")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise busy(holder) from None
        except BaseException:
            os.close(fd)
            raise
        # the holder unlinks the file before releasing it: a lock on an unlinked file is void
        same = False
        try:
            with contextlib.suppress(FileNotFoundError):
                same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                return fd
        except BaseException:  # a full disk, Ctrl-C: never leave the lock held
            if same:  # the file is ours to remove; otherwise it may be another run's
                unlock_file(fd, lock_path)
            else:
                os.close(fd)
            raise
        os.close(fd)
    raise fail(f"could not take its lock {lock_path}; try again")


def unlock_file(fd: int, lock_path: Path) -> None:
    """Release a lock taken by :func:`lock_file` (its file unlinked first, while held)."""
    with contextlib.suppress(OSError):
        os.unlink(lock_path)
    os.close(fd)


# errors of creating or flocking a lock file that mean "no lock possible here", not tampering
_NO_LOCK_HERE = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}
)


class PathLock:
    """A lock on the file ``target`` (``what`` names it in errors), held from :meth:`acquire`
    to :meth:`release`; both may be called more than once."""

    def __init__(self, target: str | os.PathLike[str], what: str) -> None:
        self.target = Path(os.path.abspath(target))
        self.what = what
        self._fd: int | None = None
        self._lock_path: Path | None = None

    def _where(self) -> Path | None:
        """The lock file beside the real file, or None where no other run can name it (a
        pipe, a terminal, an unlinked file reached through /dev/fd)."""
        try:
            st = os.stat(self.target)
        except FileNotFoundError:
            st = None
        except OSError:
            return None
        if st is not None and not stat.S_ISREG(st.st_mode):
            return None
        real = Path(os.path.realpath(self.target))
        if st is not None and not real.exists():
            return None
        return real.parent / f".{real.name}.lock"

    def acquire(self) -> None:
        """Take the lock, or raise :class:`FileLockedError` naming the run that holds it."""
        if self._fd is not None:
            return
        lock_path = self._where()
        if lock_path is None:
            return

        def busy(holder: str) -> FileLockedError:
            who = (
                "another fit in this process"
                if holder == str(os.getpid())
                else f"another regtorch run (pid {holder})"
            )
            return FileLockedError(
                f"{self.what} {self.target} is being written by {who}; wait for it to finish "
                "or choose another file."
            )

        def fail(reason: str) -> FileLockedError:
            return FileLockedError(f"{self.what} {self.target}: {reason}.")

        try:
            self._fd = lock_file(lock_path, busy, fail)
        except OSError as exc:
            if exc.errno not in _NO_LOCK_HERE:
                raise FileLockedError(
                    f"{self.what} {self.target}: cannot create its lock file {lock_path} "
                    f"({exc.strerror or exc})."
                ) from exc
            from regtorch.exceptions import RegtorchWarning

            warnings.warn(
                f"{self.what} {self.target}: cannot lock it ({exc.strerror or exc} for "
                f"{lock_path}); another run writing the same file at once would not be "
                "detected.",
                RegtorchWarning,
                stacklevel=3,
            )
            return
        self._lock_path = lock_path

    def release(self) -> None:
        """Release the lock if held."""
        if self._fd is not None and self._lock_path is not None:
            fd, self._fd = self._fd, None
            unlock_file(fd, self._lock_path)

    @property
    def held(self) -> bool:
        """Whether this object holds its lock now."""
        return self._fd is not None
