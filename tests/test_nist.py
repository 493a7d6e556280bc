"""NIST StRD linear least squares: all 11 datasets against their certified values.

LRE (log relative error) is NIST's measure of the digits in agreement, capped at 15, with
the absolute error where the certified value is 0. The data files (tests/data/nist) are
parsed for the certified values and the data; designs follow each file's model.
"""

import json
import os
import re
import subprocess
import sys
import warnings
from fractions import Fraction
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from regtorch import LinearRegression
from regtorch.data import TableSource
from regtorch.linear import stream_fit_linear

DATA = Path(__file__).parent / "data" / "nist"
DEGREE = {"Norris": 1, "Pontius": 2, "NoInt1": 1, "NoInt2": 1, "Filip": 10}
DEGREE.update({f"Wampler{i}": 5 for i in range(1, 6)})
NAMES = ["Norris", "Pontius", "NoInt1", "NoInt2", "Filip", "Longley"]
NAMES += [f"Wampler{i}" for i in range(1, 6)]

# Minimum LREs of the default solver (the targets), coefficients and standard
# errors. Filip's coefficients: the issue asks 8.0, but the exact least-squares solution of
# the float64 design itself (rational arithmetic, test_filip_ceiling_...) reaches only 7.61:
# no float64 solver can do better, so 7.6 is asserted (the default is correct to 12+ digits).
COEF_TARGET = {
    "Norris": 13.0,
    "Pontius": 12.6,
    "NoInt1": 14.7,
    "NoInt2": 15.0,
    "Filip": 7.6,
    "Longley": 13.6,
    "Wampler1": 9.6,
    "Wampler2": 13.0,
    "Wampler3": 9.5,
    "Wampler4": 9.2,
    "Wampler5": 7.6,
}
SE_TARGET = {
    "Norris": 13.8,
    "Pontius": 13.1,
    "NoInt1": 15.0,
    "NoInt2": 14.9,
    "Filip": 7.0,
    "Longley": 12.6,
    "Wampler1": 9.7,
    "Wampler2": 14.5,
    "Wampler3": 10.4,
    "Wampler4": 10.4,
    "Wampler5": 10.4,
}
# the other exact solvers and the streamed fit (coefficients and standard errors)
OTHER_TARGET = {n: 12.0 for n in ["Longley", "Norris", "Pontius", "NoInt1", "NoInt2", "Wampler2"]}
OTHER_TARGET.update({"Wampler1": 8.0, "Wampler3": 8.0, "Wampler4": 8.0, "Wampler5": 6.0})
OTHER_TARGET["Filip"] = 7.0


def lre(x, c):
    """NIST's log relative error, capped at 15; absolute error where ``c == 0``."""
    x, c = np.asarray(x, float), np.asarray(c, float)
    err = np.where(c == 0, np.abs(x - c), np.abs(x - c) / np.where(c == 0, 1.0, np.abs(c)))
    with np.errstate(divide="ignore"):
        return np.minimum(15.0, -np.log10(err))


@cache
def load(name):
    """Certified (params, bse, resid_sd, r2) and the (y, x...) data of one .dat file."""
    lines = (DATA / f"{name}.dat").read_text().splitlines()
    params, bse, resid_sd, r2, start = [], [], None, None, None
    for i, line in enumerate(lines):
        m = re.match(r"\s*B\d+\s+(\S+)\s+(\S+)\s*$", line)
        if m:
            params.append(float(m.group(1)))
            bse.append(float(m.group(2)))
        elif line.strip().startswith("Standard Deviation") and "Residual" in lines[i - 1]:
            resid_sd = float(line.split()[-1])
        elif line.strip().startswith("R-Squared"):
            r2 = float(line.split()[-1])
        elif line.strip().startswith("Data:") and "y" in line.split():
            start = i + 1
    data = np.array([[float(v) for v in ln.split()] for ln in lines[start:] if ln.strip()])
    return np.array(params), np.array(bse), resid_sd, r2, data


def design(name):
    """(X as a DataFrame, y, fit_intercept) as the file's model says."""
    *_, data = load(name)
    y = data[:, 0]
    if name == "Longley":
        X = data[:, 1:]
    else:
        x = data[:, 1]
        X = np.column_stack([x**k for k in range(1, DEGREE[name] + 1)])
    cols = [f"x{i + 1}" for i in range(X.shape[1])]
    return pd.DataFrame(X, columns=cols), y, not name.startswith("NoInt")


def measure(summary, name):
    params, bse, resid_sd, r2, _ = load(name)
    return {
        "coef": float(lre(summary.params, params).min()),
        "se": float(lre(summary.bse, bse).min()),
        "resid_sd": float(lre(summary.resid_std_err, resid_sd)),
        "r2": float(lre(summary.rsquared, r2)),
    }


def fit(name, solver):
    X, y, fi = design(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallbacks warn; tested separately
        m = LinearRegression(fit_intercept=fi, solver=solver).fit(X, y)
    return m


def _record(name, solver, got):
    """Append measured LREs to $REGTORCH_LRE_LOG (the MKL comparison reads them)."""
    path = os.environ.get("REGTORCH_LRE_LOG")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"name": name, "solver": solver, **got}) + "\n")


def test_certified_values_are_parsed():
    params, bse, resid_sd, r2, data = load("Longley")
    assert params[0] == -3482258.63459582 and bse[-1] == 455.478499142212
    assert (resid_sd, r2) == (304.854073561965, 0.995479004577296)
    assert data.shape == (16, 7)
    assert load("Filip")[4].shape == (82, 2) and len(load("Filip")[0]) == 11
    assert load("Wampler1")[1].tolist() == [0.0] * 6


@pytest.mark.parametrize("name", NAMES)
def test_default_solver_meets_the_targets(name):
    m = fit(name, "auto")
    got = measure(m.summary(), name)
    _record(name, "auto", got)
    assert got["coef"] >= COEF_TARGET[name], got
    assert got["se"] >= SE_TARGET[name], got
    # residual standard deviation and R2 at least as good as the standard errors
    assert got["resid_sd"] >= SE_TARGET[name], got
    assert got["r2"] >= SE_TARGET[name], got
    assert m.solver_ == "extended"


@pytest.mark.parametrize("solver", ["qr", "cholesky", "svd"])
@pytest.mark.parametrize("name", NAMES)
def test_other_exact_solvers(name, solver):
    m = fit(name, solver)
    got = measure(m.summary(), name)
    _record(name, solver, got)
    assert got["coef"] >= OTHER_TARGET[name], got
    assert got["se"] >= OTHER_TARGET[name], got


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("nist")
    for name in NAMES:
        X, y, _ = design(name)
        df = X.assign(y=y)
        pq.write_table(
            pa.Table.from_pandas(df, preserve_index=False), d / f"{name}.parquet", row_group_size=7
        )
    return d


@pytest.mark.parametrize("name", NAMES)
def test_streamed_fit(name, parquet_dir):
    _, _, fi = design(name)
    est = LinearRegression(fit_intercept=fi)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stream_fit_linear(est, TableSource(parquet_dir / f"{name}.parquet", "y", batch_rows=5))
    got = measure(est.summary(), name)
    _record(name, "streamed", got)
    assert got["coef"] >= OTHER_TARGET[name], got
    assert got["se"] >= OTHER_TARGET[name], got


def test_fallbacks_on_filip_are_visible(parquet_dir):
    X, y, _ = design("Filip")
    with pytest.warns(UserWarning, match="fallback from svd"):
        m = LinearRegression(solver="svd").fit(X, y)
    assert m.solver_.startswith("extended (fallback from svd: float64 found rank 9 < 10")
    assert "Solver: extended (fallback from svd" in str(m.summary())
    with pytest.warns(UserWarning, match="fallback from cholesky"):
        m = LinearRegression(solver="cholesky").fit(X, y)
    # condition ~1e17: whether Cholesky breaks down or merely exceeds the limit depends on
    # the BLAS kernel (AVX2 breaks down); either way the fallback is named
    assert re.match(
        r"qr \(fallback from cholesky: scaled Gram (condition number|not positive definite)",
        m.solver_,
    ), m.solver_
    assert "fallback from cholesky" in str(m.summary())
    est = LinearRegression()
    with pytest.warns(UserWarning, match="fallback from streaming-tsqr"):
        stream_fit_linear(est, TableSource(parquet_dir / "Filip.parquet", "y", batch_rows=5))
    assert est.solver_.startswith("streaming-extended (fallback from streaming-tsqr")
    assert "streaming-extended" in str(est.summary())


def test_filip_ceiling_is_the_float64_design():
    """The exact least-squares solution of the float64 Filip design, in rational arithmetic:
    its LRE against the certified values is below 8, and the default agrees with it."""
    X, y, _ = design("Filip")
    Z = [[Fraction(1)] + [Fraction(v) for v in row] for row in X.to_numpy()]
    Y = [Fraction(v) for v in y]
    p = len(Z[0])
    M = [
        [sum(r[a] * r[b] for r in Z) for b in range(p)] + [sum(r[a] * t for r, t in zip(Z, Y))]
        for a in range(p)
    ]
    for i in range(p):  # Gaussian elimination on the normal equations, exactly
        for j in range(i + 1, p):
            f = M[j][i] / M[i][i]
            M[j] = [u - f * v for u, v in zip(M[j], M[i])]
    b = [Fraction(0)] * p
    for i in range(p - 1, -1, -1):
        b[i] = (M[i][p] - sum(M[i][t] * b[t] for t in range(i + 1, p))) / M[i][i]
    exact = np.array([float(v) for v in b])
    assert 7.5 < lre(exact, load("Filip")[0]).min() < 8.0
    s = fit("Filip", "auto").summary()
    assert lre(s.params, exact).min() >= 12


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["SSE4_2", "AVX2", "AVX512", None])
def test_accuracy_under_every_mkl_instruction_set(isa, tmp_path):
    """The accuracy tests above, rerun with MKL restricted to one instruction set."""
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS")}
    if isa is not None:
        env["MKL_ENABLE_INSTRUCTIONS"] = isa
    env["REGTORCH_LRE_LOG"] = str(tmp_path / "lre.jsonl")
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider"]
    cmd += ["-k", "not mkl and not ceiling", "-x"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "lre.jsonl").read_text().splitlines()]
    assert len(rows) == len(NAMES) * 5
