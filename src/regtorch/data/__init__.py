"""Data sources (arrays in memory, tables on disk in batches), one schema check, one encoder,
one split.

Names load on first use, so importing a submodule stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "DataError": "regtorch.data.readers",
    "read_table": "regtorch.data.readers",
    "Encoder": "regtorch.data.schema",
    "prepare": "regtorch.data.schema",
    "Batch": "regtorch.data.table",
    "TableSource": "regtorch.data.table",
    "default_memory_limit": "regtorch.data.memory",
    "parse_memory": "regtorch.data.memory",
    "hash01": "regtorch.data.split",
    "assign": "regtorch.data.split",
    "ArraySource": "regtorch.data.source",
    "sample_weights": "regtorch.data.schema",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'regtorch.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
