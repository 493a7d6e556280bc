"""regtorch: regression with PyTorch, scikit-learn style.

Heavy submodules load on first use, so ``import regtorch`` (and the CLI) start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from regtorch import _compat
from regtorch._version import __version__

_LAZY = {
    "LinearRegression": "regtorch.linear.estimators",
    "Ridge": "regtorch.linear.estimators",
    "Lasso": "regtorch.linear.estimators",
    "ElasticNet": "regtorch.linear.estimators",
    "LassoCV": "regtorch.linear.cv",
    "ElasticNetCV": "regtorch.linear.cv",
    "RidgeCV": "regtorch.linear.ridgecv",
    "lasso_path": "regtorch.linear.path",
    "enet_path": "regtorch.linear.path",
    "MLPRegressor": "regtorch.nn.mlp",
    "History": "regtorch.nn.loop",
    "save": "regtorch.io",
    "load": "regtorch.io",
    "train": "regtorch.nn.loop",
    "make_line": "regtorch.datasets",
    "make_sine": "regtorch.datasets",
    "RegtorchWarning": "regtorch.exceptions",
    "RankWarning": "regtorch.exceptions",
    "IllConditionedWarning": "regtorch.exceptions",
    "DataWarning": "regtorch.exceptions",
}

__all__ = ["__version__", *_LAZY]

_compat.install()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'regtorch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
