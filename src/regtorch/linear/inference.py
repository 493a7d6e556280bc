"""Inference for least-squares fits: standard errors, t, p, intervals, fit statistics.

Everything comes from the upper triangular factor ``R`` of the centred, weighted design
(``R'R = Xc' W Xc``): standard errors are row norms of ``R^-1``; no ``inv(X'X)`` is formed.
Names follow statsmodels (``params``, ``bse``, ``tvalues``, ``pvalues``, ``conf_int()``, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import special

__all__ = [
    "COV_TYPES",
    "RegressionSummary",
    "coef_frame",
    "fit_info",
    "predict_interval",
    "summarize",
]

COV_TYPES = ("nonrobust", "HC0", "HC1", "HC2", "HC3")


@dataclass
class RegressionSummary:
    """A regression table with statsmodels' attribute names; intercept first."""

    names: list[str]
    params: np.ndarray
    bse: np.ndarray
    df_resid: float
    df_model: float
    nobs: int
    rsquared: float
    rsquared_adj: float
    fvalue: float
    f_pvalue: float
    llf: float
    aic: float
    bic: float
    scale: float  # residual variance, ssr / df_resid
    ssr: float
    level: float = 0.95
    cov_type: str = "nonrobust"
    solver: str = ""  # what computed the coefficients (names any fallback)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tvalues(self) -> np.ndarray:
        """t statistics, ``params / bse`` (infinite where a perfect fit has bse 0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.params / self.bse

    @property
    def pvalues(self) -> np.ndarray:
        """Two-sided p-values of the t statistics."""
        return 2 * special.stdtr(self.df_resid, -np.abs(self.tvalues))  # 2 * t.sf(|t|)

    @property
    def resid_std_err(self) -> float:
        """Residual standard error, ``sqrt(ssr / df_resid)``."""
        return math.sqrt(self.scale)

    def conf_int(self, alpha: float | None = None) -> np.ndarray:
        """Confidence intervals ``(n_params, 2)``; ``alpha`` defaults to ``1 - level``."""
        a = 1 - self.level if alpha is None else alpha
        q = special.stdtrit(self.df_resid, 1 - a / 2)  # t.ppf
        return np.column_stack([self.params - q * self.bse, self.params + q * self.bse])

    def to_frame(self) -> Any:
        """The coefficient table as a pandas DataFrame."""
        import pandas as pd

        ci = self.conf_int()
        lo, hi = (1 - self.level) / 2, 1 - (1 - self.level) / 2
        return pd.DataFrame(
            {
                "coef": self.params,
                "std err": self.bse,
                "t": self.tvalues,
                "P>|t|": self.pvalues,
                f"[{lo:.3g}": ci[:, 0],
                f"{hi:.3g}]": ci[:, 1],
            },
            index=self.names,
        )

    def __str__(self) -> str:
        frame = self.to_frame()
        head = [
            f"Least squares ({self.cov_type} covariance)",
            f"No. observations: {self.nobs}    Df residuals: {self.df_resid:g}    "
            f"Df model: {self.df_model:g}",
            f"R-squared: {self.rsquared:.6g}    Adj. R-squared: {self.rsquared_adj:.6g}",
            f"F-statistic: {self.fvalue:.6g}    Prob (F-statistic): {self.f_pvalue:.4g}",
            f"Log-likelihood: {self.llf:.6g}    AIC: {self.aic:.6g}    BIC: {self.bic:.6g}",
            f"Residual std. error: {self.resid_std_err:.6g}",
            *([f"Solver: {self.solver}"] if self.solver else []),
            "",
        ]
        return "\n".join(head) + frame.to_string(float_format=lambda v: f"{v:.6g}")

    __repr__ = __str__

    def _header(self) -> list[tuple[str, str]]:
        """The fit statistics shown above the coefficient table, as (label, value)."""
        rows = [
            ("Covariance", self.cov_type),
            ("No. observations", f"{self.nobs}"),
            ("Df residuals", f"{self.df_resid:g}"),
            ("Df model", f"{self.df_model:g}"),
            ("R-squared", f"{self.rsquared:.6g}"),
            ("Adj. R-squared", f"{self.rsquared_adj:.6g}"),
            ("F-statistic", f"{self.fvalue:.6g}"),
            ("Prob (F-statistic)", f"{self.f_pvalue:.4g}"),
            ("Log-likelihood", f"{self.llf:.6g}"),
            ("AIC", f"{self.aic:.6g}"),
            ("BIC", f"{self.bic:.6g}"),
            ("Residual std. error", f"{self.resid_std_err:.6g}"),
        ]
        return rows + ([("Solver", self.solver)] if self.solver else [])

    def _repr_html_(self) -> str:
        """The summary as HTML for notebooks: fit statistics, then the coefficient table."""
        from html import escape

        cells = "".join(
            f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in self._header()
        )
        coefs = self.to_frame().to_html(
            float_format=lambda v: f"{v:.6g}", escape=True, classes="regtorch-coef"
        )
        return (
            '<div class="regtorch-summary"><p><b>Least squares</b></p>'
            f'<table class="regtorch-stats">{cells}</table>{coefs}</div>'
        )


def coef_frame(est: Any) -> Any:
    """A fitted linear model's ``intercept_`` and ``coef_`` as a DataFrame (``coef_frame()``)."""
    import pandas as pd

    W = np.atleast_2d(np.asarray(est.coef_, dtype=np.float64))  # (k, p)
    k, p = W.shape
    feats = getattr(est, "feature_names_in_", None)
    names = [str(f) for f in feats] if feats is not None else [f"x{i}" for i in range(p)]
    if est.fit_intercept:
        b = np.broadcast_to(np.asarray(est.intercept_, dtype=np.float64), (k,))
        W = np.column_stack([b, W])
        # a feature already called "intercept" keeps its name; the intercept row gives way
        names = ["(intercept)" if "intercept" in names else "intercept", *names]
    columns = ["coef"] if np.ndim(est.coef_) == 1 else [f"y{j}" for j in range(k)]
    return pd.DataFrame(W.T.copy(), index=pd.Index(names, dtype=object), columns=columns)


def _names(est: Any, p: int) -> list[str]:
    feats = getattr(est, "feature_names_in_", None)
    names = [str(f) for f in feats] if feats is not None else [f"x{i + 1}" for i in range(p)]
    return (["const"] if est.fit_intercept else []) + names


def _factor(est: Any) -> torch.Tensor:
    R = getattr(est, "_R", None)
    if R is None:
        raise ValueError(
            "Statistics need a full-rank closed-form fit: refit with solver='auto', 'qr' or "
            "'cholesky' (the design may also be rank deficient, where coefficients are not "
            "identified)."
        )
    return R.to(torch.float64)


def _check_single_target(est: Any) -> None:
    if np.ndim(est.coef_) != 1 and np.shape(est.coef_)[0] != 1:
        raise ValueError("summary() and predict_interval() support one target; fit one per column.")


def _check_representable(se: np.ndarray, ssr: float, names: list[str], k_const: int) -> None:
    """Refuse standard errors that float64 cannot hold (0 or inf from over/underflow)."""
    terms = list(names) if len(names) == se.size else (["const"] if k_const else []) + list(names)
    bad = ~np.isfinite(se) | ((se == 0) & (ssr > 0))
    if not math.isfinite(ssr) or bool(bad.any()):
        which = [t for t, b in zip(terms, bad) if b] or terms
        raise ValueError(
            "Standard errors cannot be represented in float64 for "
            f"{', '.join(repr(t) for t in which[:5])}: the magnitudes of the columns or of "
            "the target (near 1e300 or 1e-300) leave no room for their squares. The "
            "coefficients are fitted; rescale the data for the statistics."
        )


def summarize(
    est: Any,
    level: float = 0.95,
    cov_type: str = "nonrobust",
    X: Any | None = None,
    y: Any | None = None,
    sample_weight: Any | None = None,
) -> RegressionSummary:
    """Build the :class:`RegressionSummary` of a fitted ``LinearRegression``."""
    if cov_type not in COV_TYPES:
        raise ValueError(f"cov_type must be one of {COV_TYPES}, got {cov_type!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    _check_single_target(est)
    R = _factor(est)
    info = est._fit_info
    p = R.shape[0]
    k_const = 1 if est.fit_intercept else 0
    n = info["n_eff"]
    df_model = float(p)
    df_resid = float(n - p - k_const)
    if df_resid <= 0:
        raise ValueError(
            f"No residual degrees of freedom ({n} samples for {p + k_const} parameters): "
            "standard errors are undefined."
        )
    ssr = float(info["sse"][0])
    sst = float(info["sst"][0])
    scale = ssr / df_resid
    eye = torch.eye(p, dtype=R.dtype, device=R.device)
    Rinv = torch.linalg.solve_triangular(R, eye, upper=True)  # (p, p)
    xo = torch.as_tensor(info["X_offset"], dtype=R.dtype, device=R.device)
    params = np.concatenate([np.ravel(est.intercept_)[:1] if k_const else [], np.ravel(est.coef_)])
    bse_unit = getattr(est, "_bse_unit", None)
    if cov_type == "nonrobust" and bse_unit is not None:
        # sqrt diag of the unscaled covariance, from the double-double inverse
        se = np.asarray(bse_unit, dtype=np.float64) * math.sqrt(scale)
    elif cov_type == "nonrobust":
        se_b = Rinv.square().sum(1).sqrt() * math.sqrt(scale)
        se = se_b.cpu().numpy()
        if k_const:
            v0 = scale * (1.0 / info["sw_sum"] + float((Rinv.mT @ xo).square().sum()))
            se = np.concatenate([[math.sqrt(v0)], se])
    else:
        se = _robust_se(est, cov_type, X, y, sample_weight)
    _check_representable(np.asarray(se, dtype=np.float64), ssr, _names(est, p), k_const)
    rsq = 1 - ssr / sst if sst > 0 else float("nan")
    rsq_adj = 1 - (n - k_const) / df_resid * (1 - rsq)
    ess = sst - ssr
    # a perfect fit (ssr == 0) has an infinite F and log-likelihood: say so, do not crash
    with np.errstate(divide="ignore", invalid="ignore"):
        fvalue = float(np.divide(ess / df_model, scale)) if df_model > 0 else float("nan")
    # f.sf; scipy.special, not scipy.stats: importing scipy.stats alone takes about 1 s
    f_pvalue = float(special.fdtrc(df_model, df_resid, fvalue)) if df_model > 0 else math.nan
    log_ssr = math.log(ssr / n) if ssr > 0 else -math.inf
    llf = -n / 2 * (math.log(2 * math.pi) + log_ssr + 1) + 0.5 * info["log_w_sum"]
    k = df_model + k_const
    return RegressionSummary(
        names=_names(est, p),
        params=params,
        bse=np.asarray(se, dtype=np.float64),
        df_resid=df_resid,
        df_model=df_model,
        nobs=n,
        rsquared=rsq,
        rsquared_adj=rsq_adj,
        fvalue=fvalue,
        f_pvalue=f_pvalue,
        llf=llf,
        aic=-2 * llf + 2 * k,
        bic=-2 * llf + math.log(n) * k,
        scale=scale,
        ssr=ssr,
        level=level,
        cov_type=cov_type,
        solver=str(getattr(est, "solver_", "")),
    )


def _robust_se(
    est: Any, cov_type: str, X: Any | None, y: Any | None, sample_weight: Any | None
) -> np.ndarray:
    """HC0-HC3 sandwich standard errors from a QR of the full weighted design."""
    if X is None or y is None:
        raise ValueError(
            f"cov_type={cov_type!r} needs the training data: pass X=, y= (and sample_weight=) "
            "to summary(); the model keeps only its triangular factor."
        )
    from regtorch._base import to_numpy_input, validate_predict_input

    Xn = validate_predict_input(est, X)
    yn = np.asarray(to_numpy_input(y), dtype=np.float64).reshape(-1)
    if yn.shape[0] != Xn.shape[0]:
        raise ValueError(
            f"Found input variables with inconsistent numbers of samples: "
            f"[{Xn.shape[0]}, {yn.shape[0]}]"
        )
    from regtorch._base import check_sample_weight, data_fingerprint, same_data

    w = check_sample_weight(sample_weight, Xn)
    info = est._fit_info
    if int((w > 0).sum()) != info["n_eff"] or not np.isclose(w.sum(), info["sw_sum"], rtol=1e-9):
        raise ValueError(
            "X, y and sample_weight passed to summary() must be the training data the model "
            "was fitted on (the weights differ from the fit's)."
        )
    fp = info.get("fingerprint")
    if fp is not None and not same_data(fp, data_fingerprint(Xn, yn, w)):
        raise ValueError(
            f"X, y and sample_weight passed to summary(cov_type={cov_type!r}) must be the "
            "training data the model was fitted on (their sums and cross-products differ "
            "from the fit's): robust standard errors need the fit's own residuals."
        )
    sw = np.sqrt(w)
    resid = (yn - np.ravel(est.predict(Xn))) * sw
    Z = Xn if not est.fit_intercept else np.column_stack([np.ones(len(Xn)), Xn])
    Zt = torch.as_tensor(Z * sw[:, None])
    Q, R = torch.linalg.qr(Zt, mode="reduced")
    Rinv = torch.linalg.solve_triangular(R, torch.eye(R.shape[0], dtype=R.dtype), upper=True)
    e = torch.as_tensor(resid)
    n, k = Zt.shape
    if cov_type in ("HC2", "HC3"):
        h = Q.square().sum(1)  # leverages
        e = e / (1 - h) ** (0.5 if cov_type == "HC2" else 1.0)
    A = Rinv @ (Q * e.unsqueeze(1)).mT  # (k, n); Cov = A A'
    se = A.square().sum(1).sqrt().numpy()
    if cov_type == "HC1":
        n_eff = int((w > 0).sum())  # zero-weight rows are not observations
        se = se * math.sqrt(n_eff / (n_eff - k))
    return se


def predict_interval(est: Any, X: Any, level: float = 0.95, kind: str = "confidence") -> np.ndarray:
    """Prediction with a confidence or prediction interval; see ``LinearRegression``."""
    if kind not in ("confidence", "prediction"):
        raise ValueError(f"kind must be 'confidence' or 'prediction', got {kind!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    _check_single_target(est)
    from regtorch._base import validate_predict_input

    s = summarize(est, level=level)
    Xn = validate_predict_input(est, X)
    R = _factor(est)
    info = est._fit_info
    d = torch.as_tensor(Xn - (info["X_offset"] if est.fit_intercept else 0.0), dtype=R.dtype)
    # Rinv' d for each row: solve R' z = d
    z = torch.linalg.solve_triangular(R.mT, d.mT, upper=False)  # (p, n)
    var_mean = s.scale * z.square().sum(0).numpy()
    if est.fit_intercept:
        var_mean = var_mean + s.scale / info["sw_sum"]
    var = var_mean + (s.scale if kind == "prediction" else 0.0)
    q = special.stdtrit(s.df_resid, 1 - (1 - level) / 2)  # t.ppf
    pred = np.ravel(est.predict(Xn))
    half = q * np.sqrt(var)
    return np.column_stack([pred, pred - half, pred + half])


def _info_dict(
    X: torch.Tensor,
    w: torch.Tensor | None,
    sse: torch.Tensor,
    sst: torch.Tensor,
    xo: torch.Tensor,
) -> dict[str, Any]:
    """The sums the statistics need, from the training rows and weights."""
    n = int(X.shape[0])
    if w is None:
        return fit_info(n, n, float(n), 0.0, sse, sst, xo)
    log_w = float(torch.log(w[w > 0]).sum())
    return fit_info(n, int((w > 0).sum()), float(w.sum()), log_w, sse, sst, xo)


def fit_info(
    n: int,
    n_eff: int,
    sw_sum: float,
    log_w_sum: float,
    sse: torch.Tensor,
    sst: torch.Tensor,
    xo: torch.Tensor,
) -> dict[str, Any]:
    """The sums the statistics need (``_fit_info``); ``n_eff`` counts positive weights."""
    return {
        "n": n,
        "n_eff": n_eff,
        "sw_sum": sw_sum,
        "sse": sse.cpu().numpy(),
        "sst": sst.cpu().numpy(),
        "log_w_sum": log_w_sum,
        "X_offset": xo.cpu().numpy(),
    }
