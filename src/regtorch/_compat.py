"""Old module paths, kept working with a DeprecationWarning that names the new place.

regtorch 0.2 moved its modules into packages (``regtorch.data``, ``regtorch.linear``,
``regtorch.nn``, ``regtorch.cli``). Importing a name from an old path still works: the old
module is a light stand-in that imports the new one on first use and warns.
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings
from typing import Any

_STREAMING = {
    "TableSource": "regtorch.data",
    "Batch": "regtorch.data",
    "default_memory_limit": "regtorch.data",
    "parse_memory": "regtorch.data",
    "MomentState": "regtorch.linear",
    "stream_fit_linear": "regtorch.linear",
    "stream_fit_mlp": "regtorch.nn",
    "stream_metrics": "regtorch.metrics",
}
_ESTIMATORS = {
    "LinearRegression": "regtorch.linear",
    "Ridge": "regtorch.linear",
    "Lasso": "regtorch.linear",
    "ElasticNet": "regtorch.linear",
    "MLPRegressor": "regtorch.nn",
}
MOVED: dict[str, str | dict[str, str]] = {
    "regtorch.training": "regtorch.nn.loop",
    "regtorch.modules": "regtorch.nn.modules",
    "regtorch.checkpoint": "regtorch.nn.checkpoint",
    "regtorch.solvers": "regtorch.linear.solvers",
    "regtorch.stats": "regtorch.linear.inference",
    "regtorch.readers": "regtorch.data.readers",
    "regtorch.streaming": _STREAMING,
    "regtorch.estimators": _ESTIMATORS,
    "regtorch.estimators.linear": "regtorch.linear.estimators",
    "regtorch.estimators.mlp": "regtorch.nn.mlp",
}


class _Moved(types.ModuleType):
    """A module that forwards attribute reads to where the names live now."""

    def __init__(self, old: str, new: str | dict[str, str]) -> None:
        where = new if isinstance(new, str) else ", ".join(sorted(set(new.values())))
        super().__init__(old, f"Deprecated: moved to {where}.")
        self._new = new

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        new = self._new if isinstance(self._new, str) else self._new.get(name)
        if new is None:
            raise AttributeError(
                f"module {self.__name__!r} is gone and had no public name {name!r}; see "
                "regtorch.data, regtorch.linear and regtorch.nn."
            )
        value = getattr(importlib.import_module(new), name)
        warnings.warn(
            f"{self.__name__}.{name} moved to {new}.{name}; the old path will be removed in a "
            "future release.",
            DeprecationWarning,
            stacklevel=2,
        )
        return value


def install() -> None:
    """Register the stand-ins (cheap: nothing is imported until a name is read)."""
    for old, new in MOVED.items():
        module = sys.modules.setdefault(old, _Moved(old, new))
        parent, _, child = old.rpartition(".")
        # as an import would: the parent module gets the child as an attribute
        object.__setattr__(sys.modules[parent], child, module)
