import numpy as np
import pytest
import sklearn.metrics as skm
import torch
from torcheval.metrics import MeanSquaredError, R2Score

from regtorch.metrics import (
    RegressionMetrics,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    root_mean_squared_error,
)

rng = np.random.default_rng(0)
Y1 = rng.normal(size=200)
P1 = Y1 + rng.normal(scale=0.5, size=200)
Y2 = rng.normal(size=(200, 3)) * [1.0, 10.0, 0.1]
P2 = Y2 + rng.normal(scale=0.3, size=(200, 3))


@pytest.mark.parametrize("y, p", [(Y1, P1), (Y2, P2)])
@pytest.mark.parametrize("multioutput", ["uniform_average", "raw_values", "variance_weighted"])
def test_agree_with_sklearn(y, p, multioutput):
    w = rng.uniform(0.5, 2.0, size=len(y))
    np.testing.assert_allclose(
        r2_score(y, p, multioutput=multioutput),
        skm.r2_score(y, p, multioutput=multioutput),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        r2_score(y, p, sample_weight=w, multioutput=multioutput),
        skm.r2_score(y, p, sample_weight=w, multioutput=multioutput),
        rtol=1e-12,
    )
    if multioutput == "variance_weighted":
        return
    for ours, theirs in [
        (mean_squared_error, skm.mean_squared_error),
        (mean_absolute_error, skm.mean_absolute_error),
        (root_mean_squared_error, skm.root_mean_squared_error),
    ]:
        np.testing.assert_allclose(
            ours(y, p, multioutput=multioutput), theirs(y, p, multioutput=multioutput), rtol=1e-12
        )
        np.testing.assert_allclose(
            ours(y, p, sample_weight=w, multioutput=multioutput),
            theirs(y, p, sample_weight=w, multioutput=multioutput),
            rtol=1e-12,
        )


def test_agree_with_torcheval_on_float32_tensors():
    y = torch.as_tensor(Y2, dtype=torch.float32)
    p = torch.as_tensor(P2, dtype=torch.float32)
    te_r2 = R2Score(multioutput="uniform_average")
    te_r2.update(p, y)
    te_mse = MeanSquaredError()
    te_mse.update(p, y)
    assert r2_score(y, p) == pytest.approx(float(te_r2.compute()), rel=1e-5)
    assert mean_squared_error(y, p) == pytest.approx(float(te_mse.compute()), rel=1e-5)


def test_float64_accumulation_beats_float32_cancellation():
    # a large offset makes a float32 one-pass sum of squares lose every digit
    y = 1e4 + rng.normal(size=10_000)
    p = y + rng.normal(scale=0.1, size=10_000)
    expected = skm.r2_score(y, p)
    got = r2_score(torch.as_tensor(y, dtype=torch.float32), torch.as_tensor(p, dtype=torch.float32))
    assert got == pytest.approx(expected, abs=2e-3)


def test_accumulator_merge_equals_one_shot():
    acc, other = RegressionMetrics(), RegressionMetrics()
    for i in range(0, 120, 25):
        acc.update(Y2[i : i + 25], P2[i : i + 25])
    for i in range(125, 200, 30):
        other.update(Y2[i : i + 30], P2[i : i + 30])
    acc.merge(other)
    res = acc.compute()
    assert res["r2"] == pytest.approx(skm.r2_score(Y2, P2), rel=1e-12)
    assert res["mse"] == pytest.approx(skm.mean_squared_error(Y2, P2), rel=1e-12)
    assert res["mae"] == pytest.approx(skm.mean_absolute_error(Y2, P2), rel=1e-12)
    assert res["rmse"] == pytest.approx(skm.root_mean_squared_error(Y2, P2), rel=1e-12)


def test_constant_target():
    y = np.ones(5)
    assert r2_score(y, y + 1) == skm.r2_score(y, y + 1) == 0.0
    assert (
        np.isnan(r2_score(y, y + 1, force_finite=False))
        or r2_score(y, y + 1, force_finite=False) == -np.inf
    )


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="different shapes"):
        mean_squared_error(Y1, P2)
