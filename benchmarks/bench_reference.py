"""Reference recipe (Adam 1e-3, 10k full-batch epochs) against regtorch's fast default.

Line: the fast default is exact least squares; sine: the default ``MLPRegressor()``
(standardised SiLU MLP 32-32-32, full-batch Adam with cosine decay, early stopping
against overfitting).
Ratio = reference seconds / fast seconds.
"""

from __future__ import annotations

from typing import Any

from _table import table

from regtorch.datasets import make_line, make_sine
from regtorch.experiments import run_fast_line, run_fast_sine, run_reference


def run(args: Any) -> str:
    rows = []
    for data in (make_line(), make_sine()):
        ref = run_reference(data)[0]
        fast = (run_fast_line(data) if data.name == "line" else run_fast_sine(data))[0]
        rows.append(
            [
                data.name,
                ref["seconds"],
                ref["r2"],
                fast["seconds"],
                fast["r2"],
                f"{ref['seconds'] / fast['seconds']:.0f}x",
            ]
        )
    return table(
        ["experiment", "reference s", "reference R2", "fast s", "fast R2", "speed-up"], rows
    )
