"""Reading ahead in a thread, and a rows-per-second progress bar."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

__all__ = ["Progress", "prefetch"]

T = TypeVar("T")


class Progress:
    """Rows per second and an ETA on stderr (rank 0, in a terminal or when forced)."""

    def __init__(self, total: int | None, show: bool, desc: str) -> None:
        self.bar = None
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="rows", unit_scale=True, desc=desc, leave=False)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def prefetch(it: Iterator[T], depth: int = 1) -> Iterator[T]:
    """Read the next batches in a thread while this one is reduced (pyarrow and the GEMM
    release the GIL); at most ``depth`` batches wait, so memory stays bounded."""
    import queue
    import threading

    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for b in it:
                if not put(b):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join(timeout=5)
