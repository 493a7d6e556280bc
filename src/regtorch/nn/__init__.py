"""Neural regressors: modules, the training loop, callbacks, checkpoints, MLPRegressor.

Names load on first use, so importing a submodule stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "MLPRegressor": "regtorch.nn.mlp",
    "MLP": "regtorch.nn.modules",
    "LinearModule": "regtorch.nn.modules",
    "train": "regtorch.nn.loop",
    "History": "regtorch.nn.loop",
    "Callback": "regtorch.nn.loop",
    "TrainState": "regtorch.nn.loop",
    "TrainingDivergedError": "regtorch.nn.loop",
    "init_module": "regtorch.nn.loop",
    "stream_fit_mlp": "regtorch.nn.streamed",
    "TensorBatches": "regtorch.nn.batches",
    "StreamBatches": "regtorch.nn.batches",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'regtorch.nn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
