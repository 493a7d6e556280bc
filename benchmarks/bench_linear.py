"""Linear family: fit time and accuracy against scikit-learn (and statsmodels OLS).

Dense float64 data, shapes 1,000,000 x 50, 200,000 x 500 and 5,000,000 x 10 (``--quick``
divides the rows by 10). Ratio = anchor seconds / regtorch seconds (> 1: regtorch faster).
"max |dcoef|" is the largest coefficient difference from the anchor, relative to the
largest coefficient. The X'X row is the floor of any exact method.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from _table import best_time as _time
from _table import table

import regtorch

SHAPES = [(1_000_000, 50), (200_000, 500), (5_000_000, 10)]


def _data(n: int, p: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, p)) + rng.normal(size=p)  # non-zero means: centring matters
    coef = rng.normal(size=p)
    y = X @ coef + 3.0 + rng.normal(size=n)
    return X, y


def _diff(a: Any, b: Any) -> float:
    a, b = np.ravel(a), np.ravel(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def run(args: Any) -> str:
    rows: list[list[Any]] = []
    shapes = [(n // 10, p) for n, p in SHAPES] if args.quick else SHAPES
    for n, p in shapes:
        rows += _rows_for(n, p)
    return table(["shape", "model", "anchor s", "regtorch s", "ratio", "max |dcoef|"], rows)


def _rows_for(n: int, p: int) -> list[list[Any]]:
    import sklearn.linear_model as sk

    rows: list[list[Any]] = []
    X, y = _data(n, p)
    Xt = torch.from_numpy(X)
    t_gram, _ = _time(lambda: Xt.mT @ Xt, repeat=3)
    rows.append([f"{n}x{p}", "X'X alone (floor)", "-", t_gram, "-", "-"])
    pairs: list[tuple[str, Any, Any]] = [
        ("LinearRegression", sk.LinearRegression(), regtorch.LinearRegression()),
        ("Ridge(alpha=1)", sk.Ridge(alpha=1.0), regtorch.Ridge(alpha=1.0)),
    ]
    alpha_max = float(np.max(np.abs((X - X.mean(0)).T @ (y - y.mean())))) / n
    for frac in (0.1, 0.01):
        a = alpha_max * frac
        pairs.append((f"Lasso(alpha={frac:g}*max)", sk.Lasso(alpha=a), regtorch.Lasso(alpha=a)))
        pairs.append(
            (
                f"ElasticNet(alpha={frac:g}*max)",
                sk.ElasticNet(alpha=a, l1_ratio=0.5),
                regtorch.ElasticNet(alpha=a, l1_ratio=0.5),
            )
        )
    for name, ref, ours in pairs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_ref, _ = _time(lambda ref=ref: ref.fit(X, y))
            t_ours, _ = _time(lambda ours=ours: ours.fit(X, y), repeat=2)
        rows.append(
            [
                f"{n}x{p}",
                name,
                t_ref,
                t_ours,
                f"{t_ref / t_ours:.1f}x",
                f"{_diff(ours.coef_, ref.coef_):.1e}",
            ]
        )
    if n * p <= 50_000_000:
        import statsmodels.api as sm

        def sm_fit() -> Any:
            res = sm.OLS(y, sm.add_constant(X)).fit()
            return res.bse

        def ours_fit() -> Any:
            return regtorch.LinearRegression().fit(X, y).summary().bse

        t_sm, bse_sm = _time(sm_fit)
        t_o, bse_o = _time(ours_fit, repeat=2)
        rows.append(
            [
                f"{n}x{p}",
                "OLS + summary (statsmodels)",
                t_sm,
                t_o,
                f"{t_sm / t_o:.1f}x",
                f"{_diff(bse_o, bse_sm):.1e} (se)",
            ]
        )
    return rows
