"""Two worker threads for the large in-memory passes, and the BLAS thread limit they need.

numpy releases the GIL in its loops and BLAS calls, so two threads each reading half of the
rows use both cores; BLAS then runs one thread per call (else each call would start its own
pool: four threads on two cores). The BLAS limit is process-wide, so every section that sets
it holds one lock: two such sections in different threads cannot restore each other's limits
in the wrong order.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = [
    "blas_one_thread",
    "map_halves",
    "reading_threads",
    "split_rows",
    "torch_threads",
    "worker_pool",
    "worth_threads",
]

T = TypeVar("T")

_LOCK = threading.RLock()


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worth_threads(size: int, threshold: int) -> bool:
    """Whether a pass over ``size`` values should use two threads."""
    return size >= threshold and usable_cores() >= 2


@contextmanager
def blas_one_thread() -> Iterator[None]:
    """BLAS pools (numpy's OpenBLAS) limited to one thread, under the process-wide lock."""
    with _LOCK, _controller().limit(limits=1, user_api="blas"):
        yield


@functools.cache
def _controller() -> Any:
    """The BLAS libraries loaded in this process, found once (a scan costs milliseconds);
    numpy's are loaded before any of the passes that limit them runs."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextmanager
def worker_pool() -> Iterator[ThreadPoolExecutor]:
    """Two worker threads, each calling single-threaded BLAS."""
    with blas_one_thread(), ThreadPoolExecutor(2) as pool:
        yield pool


def split_rows(n: int, block: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Rows ``0..n`` in two ranges cut at a multiple of ``block`` (the second may be empty)."""
    half = min(n, (n // 2 // block + 1) * block)
    return (0, half), (half, n)


def map_halves(
    fn: Callable[[int, int], T], n: int, block: int, size: int, threshold: int
) -> list[T]:
    """``fn(start, stop)`` over rows ``0..n``: one call, or (``size`` values from
    ``threshold`` on) two halves cut at a multiple of ``block`` on two threads; the results
    in row order, for the caller to merge."""
    if not worth_threads(size, threshold):
        return [fn(0, n)]
    with worker_pool() as pool:
        return list(pool.map(lambda r: fn(*r), split_rows(n, block)))


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op threads (restored on exit; None: unchanged)."""
    if n is None:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def reading_threads() -> Iterator[None]:
    """One compute thread (torch's and the BLAS pools, e.g. numpy's OpenBLAS) while a
    reader decodes: pyarrow's threads keep the other cores busy, and more compute threads
    only spin against them (measured slower on 2 cores)."""
    with torch_threads(1), blas_one_thread():
        yield
