"""Regression statistics: NIST StRD Longley certified values and statsmodels agreement."""

import numpy as np
import pytest
import statsmodels.api as sm
from sklearn.datasets import load_diabetes

from regtorch import LinearRegression

# NIST StRD, Longley: certified values (intercept first, then GNPDEFL, GNP, UNEMP, ARMED,
# POP, YEAR).
CERT_PARAMS = np.array(
    [
        -3482258.63459582,
        15.0618722713733,
        -0.358191792925910e-01,
        -2.02022980381683,
        -1.03322686717359,
        -0.511041056535807e-01,
        1829.15146461355,
    ]
)
CERT_BSE = np.array(
    [
        890420.383607373,
        84.9149257747669,
        0.334910077722432e-01,
        0.488399681651699,
        0.214274163161675,
        0.226073200069370,
        455.478499142212,
    ]
)
CERT_RESID_SD = 304.854073561965
CERT_R2 = 0.995479004577296

LONGLEY = sm.datasets.longley.load_pandas()
X_L, Y_L = LONGLEY.exog.to_numpy(float), LONGLEY.endog.to_numpy(float)
X_D, Y_D = load_diabetes(return_X_y=True)
W_D = np.random.default_rng(0).uniform(0.2, 3.0, size=len(Y_D))
W_L = np.random.default_rng(1).uniform(0.5, 2.0, size=len(Y_L))


def lre(x, c):
    """NIST's log relative error: significant digits in agreement."""
    x, c = np.asarray(x, float), np.asarray(c, float)
    with np.errstate(divide="ignore"):
        return -np.log10(np.abs(x - c) / np.abs(c))


@pytest.mark.parametrize("solver", ["auto", "qr", "cholesky"])
def test_longley_certified_values_to_13_digits(solver):
    m = LinearRegression(solver=solver).fit(LONGLEY.exog, LONGLEY.endog)  # DataFrame: names kept
    s = m.summary()
    assert lre(s.params, CERT_PARAMS).min() >= 13
    assert lre(s.bse, CERT_BSE).min() >= 13
    assert lre(s.resid_std_err, CERT_RESID_SD) >= 13
    assert lre(s.rsquared, CERT_R2) >= 13
    assert s.names == ["const", "GNPDEFL", "GNP", "UNEMP", "ARMED", "POP", "YEAR"]


def _check_against(s, ref, rtol=1e-8):
    np.testing.assert_allclose(s.params, ref.params, rtol=rtol)
    np.testing.assert_allclose(s.bse, ref.bse, rtol=rtol)
    np.testing.assert_allclose(s.tvalues, ref.tvalues, rtol=rtol)
    np.testing.assert_allclose(s.pvalues, ref.pvalues, rtol=rtol, atol=1e-300)
    np.testing.assert_allclose(s.conf_int(), np.asarray(ref.conf_int()), rtol=rtol)
    for name in (
        "rsquared",
        "rsquared_adj",
        "fvalue",
        "f_pvalue",
        "llf",
        "aic",
        "bic",
        "df_resid",
        "df_model",
        "ssr",
    ):
        assert getattr(s, name) == pytest.approx(getattr(ref, name), rel=rtol), name


@pytest.mark.parametrize("data", ["diabetes", "longley"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("solver", ["auto", "cholesky"])
def test_summary_matches_statsmodels(data, weighted, solver):
    X, y, w = (X_D, Y_D, W_D) if data == "diabetes" else (X_L, Y_L, W_L)
    sw = w if weighted else None
    m = LinearRegression(solver=solver).fit(X, y, sample_weight=sw)
    model = sm.WLS(y, sm.add_constant(X), weights=w) if weighted else sm.OLS(y, sm.add_constant(X))
    _check_against(m.summary(), model.fit())
    for hc in ("HC0", "HC1", "HC2", "HC3"):
        s = m.summary(cov_type=hc, X=X, y=y, sample_weight=sw)
        # statsmodels' own HC2/HC3 on weighted Longley are off by 1.6e-8 (checked against
        # exact rational arithmetic; ours by 1.5e-12)
        rtol = 5e-8 if data == "longley" else 1e-8
        np.testing.assert_allclose(s.bse, model.fit(cov_type=hc).bse, rtol=rtol)


@pytest.mark.parametrize("weighted", [False, True])
def test_predict_interval_matches_statsmodels(weighted):
    sw = W_D if weighted else None
    m = LinearRegression().fit(X_D, Y_D, sample_weight=sw)
    model = (
        sm.WLS(Y_D, sm.add_constant(X_D), weights=W_D)
        if weighted
        else sm.OLS(Y_D, sm.add_constant(X_D))
    )
    new = X_D[:7] * 1.1
    for level in (0.9, 0.95):
        frame = (
            model.fit()
            .get_prediction(sm.add_constant(new, has_constant="add"))
            .summary_frame(alpha=1 - level)
        )
        conf = m.predict_interval(new, level=level, kind="confidence")
        pred = m.predict_interval(new, level=level, kind="prediction")
        np.testing.assert_allclose(conf[:, 0], frame["mean"], rtol=1e-10)
        np.testing.assert_allclose(
            conf[:, 1:], frame[["mean_ci_lower", "mean_ci_upper"]], rtol=1e-8
        )
        np.testing.assert_allclose(pred[:, 1:], frame[["obs_ci_lower", "obs_ci_upper"]], rtol=1e-8)


def test_summary_without_intercept_matches_statsmodels():
    m = LinearRegression(fit_intercept=False).fit(X_D, Y_D)
    _check_against(m.summary(), sm.OLS(Y_D, X_D).fit())


def test_summary_prints_and_converts():
    s = LinearRegression().fit(LONGLEY.exog, Y_L).summary(level=0.9)
    text = str(s)
    assert "R-squared: 0.995479" in text and "GNPDEFL" in text and "AIC" in text
    frame = s.to_frame()
    assert list(frame.columns) == ["coef", "std err", "t", "P>|t|", "[0.05", "0.95]"]
    assert frame.index[0] == "const"
    np.testing.assert_allclose(frame["coef"], s.params)


def test_summary_errors_are_clear():
    m = LinearRegression().fit(X_D, Y_D)
    with pytest.raises(ValueError, match="needs the training data"):
        m.summary(cov_type="HC1")
    with pytest.raises(ValueError, match="cov_type must be one of"):
        m.summary(cov_type="HC9")
    g = LinearRegression(solver="lbfgs").fit(X_D, Y_D)
    with pytest.raises(ValueError, match="full-rank closed-form fit"):
        g.summary()


def test_robust_se_checks_weights_and_counts_zero_weight_rows_out():
    w = W_D.copy()
    w[:40] = 0.0
    m = LinearRegression().fit(X_D, Y_D, sample_weight=w)
    kept = w > 0
    ref = sm.WLS(Y_D[kept], sm.add_constant(X_D[kept]), weights=w[kept]).fit(cov_type="HC1")
    np.testing.assert_allclose(
        m.summary(cov_type="HC1", X=X_D, y=Y_D, sample_weight=w).bse, ref.bse, rtol=1e-8
    )
    with pytest.raises(ValueError, match="must be the training data"):
        m.summary(cov_type="HC0", X=X_D, y=Y_D)
    with pytest.raises(ValueError, match="sample_weight"):
        m.summary(cov_type="HC0", X=X_D, y=Y_D, sample_weight=w[:-1])


def test_single_column_2d_target_has_a_summary():
    m = LinearRegression().fit(X_D, Y_D.reshape(-1, 1))
    ref = sm.OLS(Y_D, sm.add_constant(X_D)).fit()
    np.testing.assert_allclose(m.summary().bse, ref.bse, rtol=1e-8)
    assert m.predict_interval(X_D[:3]).shape == (3, 3)
