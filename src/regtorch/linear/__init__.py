"""Linear models: mergeable moments, exact solvers, inference and the estimators.

Names load on first use, so importing a submodule stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "LinearRegression": "regtorch.linear.estimators",
    "Ridge": "regtorch.linear.estimators",
    "Lasso": "regtorch.linear.estimators",
    "ElasticNet": "regtorch.linear.estimators",
    "LassoCV": "regtorch.linear.cv",
    "ElasticNetCV": "regtorch.linear.cv",
    "RidgeCV": "regtorch.linear.ridgecv",
    "stream_fit_cv": "regtorch.linear.cv",
    "lasso_path": "regtorch.linear.path",
    "enet_path": "regtorch.linear.path",
    "LinearFit": "regtorch.linear.estimators",
    "MomentState": "regtorch.linear.moments",
    "stream_fit_linear": "regtorch.linear.streamed",
    "RankWarning": "regtorch.linear.solvers",
    "RegressionSummary": "regtorch.linear.inference",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'regtorch.linear' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
