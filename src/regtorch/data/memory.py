"""Memory budgets: parsing sizes, the default budget, what the process already holds."""

from __future__ import annotations

import math
import os

import torch

__all__ = ["default_memory_limit", "parse_memory"]

# bytes held per value of a batch: the Arrow batch, the float64 copy, a centred copy, the
# prefetched batch, slack (measured 72 for 64k-row batches)
BYTES_PER_VALUE = 8 * 10


# CSV blocks read at a time (the same on every rank)
CSV_BLOCK_BYTES = 1 << 23


# small Parquet row groups are read together, up to this many rows per unit of work
UNIT_ROWS = 1 << 16


# memory a streamed fit needs beyond its batches once started: reader and allocator buffers,
# the prefetch thread, solver workspaces (measured 14-20 MiB on CPU)
WORKING_SET = 16 * 2**20


# row groups read together cost up to this much more once their column chunks pass ~512 KiB:
# the allocator keeps large buffers in segments of their own (measured +30 MiB)
LARGE_GROUP_SLACK = 32 * 2**20


# and beyond that they are held ~2.5 times (compressed, decoded, as Arrow arrays; 3 for a
# margin): whole runs peaked 70 MiB over start-up with 9.6 MiB row groups, 88 with 46 MiB
ROW_GROUP_COPIES = 3


# the fewest rows a batch may have when the budget is tight
MIN_BATCH_ROWS = 4096


def default_memory_limit() -> int:
    """A quarter of the machine's memory."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4)
    except (ValueError, OSError, AttributeError):
        return 2 * 1024**3


def parse_memory(text: str) -> int:
    """``"2GB"``, ``"512MB"``, ``"1.5G"`` or bytes -> bytes (at least one byte)."""
    t = text.strip().upper().replace("IB", "B")
    units = {
        "KB": 1024,
        "MB": 1024**2,
        "GB": 1024**3,
        "TB": 1024**4,
        "K": 1024,
        "M": 1024**2,
        "G": 1024**3,
        "T": 1024**4,
        "B": 1,
    }
    scale, number = 1, t
    for u in sorted(units, key=len, reverse=True):
        if t.endswith(u):
            scale, number = units[u], t[: -len(u)].strip()
            break
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(
            f"Cannot read the memory size {text!r}; write e.g. 2GB or 512MB."
        ) from None
    if not math.isfinite(value):
        raise ValueError(f"Cannot read the memory size {text!r}: it must be a finite size.")
    if value <= 0:
        raise ValueError(f"Cannot read the memory size {text!r}: it must be positive.")
    if value < 1:
        raise ValueError(f"Cannot read the memory size {text!r}: it is less than one byte.")
    return int(value)


def _resident_bytes() -> int:
    """This process's resident memory now (Linux; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _resident_after_start_up() -> int:
    """Resident bytes once the code a streamed fit runs is loaded.

    Libraries map their pages on first use (scikit-learn and SciPy on import, LAPACK on the
    first factorisation): that memory is the process's, not the batches', so it is counted
    as held before the budget is split.
    """
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import regtorch.linear.estimators  # noqa: F401
    from regtorch._threads import torch_threads

    with torch_threads(1):
        torch.linalg.qr(torch.eye(8, dtype=torch.float64), mode="r")
    return _resident_bytes()


def _reading_bytes(group: int) -> int:
    """Memory a streamed fit needs beside its batches, reading ``group`` bytes at a time."""
    return int(WORKING_SET + min(LARGE_GROUP_SLACK, 16 * group) + ROW_GROUP_COPIES * group)
