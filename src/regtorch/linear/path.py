"""Regularisation paths of the elastic net on the Gram form: alpha grids and warm-started paths.

Every path point is solved exactly by a primal active-set method (Osborne's homotopy-like
method) warm-started from the previous alpha's solution; the small dense work is in numpy
float64, whose per-call overhead is far below torch's at these sizes (p up to a few hundred).
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np
import torch

from regtorch.linear.pathsolve import (
    KKT_RTOL,
    _as_numpy,
    _path_kkt,
    _solve_point,
    gram_paths,
    path_duality_gaps,
)

__all__ = [
    "alpha_grid",
    "enet_path",
    "gram_path",
    "gram_paths",
    "lasso_path",
    "path_c_max",
    "path_duality_gaps",
]

_RESOLUTION = float(np.finfo(np.float64).resolution)  # scikit-learn's grid for a zero target


def alpha_grid(c_max: float, l1_ratio: float, eps: float = 1e-3, n_alphas: int = 100) -> np.ndarray:
    """scikit-learn's alpha grid: from ``c_max / l1_ratio`` down to ``eps`` times it.

    Parameters
    ----------
    c_max : float
        ``max_j |X'Wy|_j / weight_sum`` on the centred data (with several targets, the
        largest row norm ``max_j ||(X'Wy)_j||``; with ``positive=True``,
        ``max(0, max_j (X'Wy)_j)``): see :func:`path_c_max`.
    l1_ratio : float
        In ``(0, 1]``; 0 is refused, as scikit-learn does.
    eps, n_alphas
        ``alpha_min / alpha_max`` and the number of alphas (log-spaced, decreasing).

    Examples
    --------
    >>> alpha_grid(2.0, 0.5, eps=1e-2, n_alphas=3)
    array([4.  , 0.4 , 0.04])
    """
    if l1_ratio == 0:
        raise ValueError(
            "Automatic alpha grid generation is not supported for l1_ratio=0. Please supply a "
            "grid by providing your estimator with the appropriate `alphas=` argument."
        )
    alpha_max = float(c_max) / float(l1_ratio)
    if alpha_max <= _RESOLUTION:
        return np.full(int(n_alphas), _RESOLUTION)
    return np.geomspace(alpha_max, alpha_max * eps, num=int(n_alphas))


def path_c_max(c: Any, positive: bool = False) -> float:
    """``c_max`` of :func:`alpha_grid` from ``c = X'Wy / weight_sum``, (p,) or (p, k)."""
    C = np.asarray(torch.as_tensor(c, dtype=torch.float64).cpu()).reshape(len(c), -1)
    if C.size == 0:
        return 0.0
    if positive:
        return max(0.0, float(C.max()))
    return float(np.sqrt(np.max(np.sum(C**2, axis=1))))


def gram_path(
    G: Any,
    c: Any,
    alphas: Any,
    l1_ratio: float,
    *,
    positive: bool = False,
    tol: float = 1e-4,
    max_iter: int = 10_000,
    coef_init: Any = None,
    yty: Any = None,
) -> tuple[torch.Tensor, list[int], list[float]]:
    """Elastic-net path on the Gram form, warm-started along the alphas in the order given.

    Minimises ``0.5 w'Gw - c'w + alpha * l1_ratio * |w|_1 + 0.5 * alpha * (1 - l1_ratio) * |w|^2``
    for each alpha and each column of ``c`` (one path per target), where
    ``G = Xc'WXc / weight_sum`` and ``c = Xc'Wyc / weight_sum``: scikit-learn's objective with
    weights rescaled to sum to ``n_samples``. Each point is exact (its KKT conditions hold
    to ``1e-12`` of ``max |c|``); ``tol`` and ``max_iter`` only bound the iterative fallback.

    Parameters
    ----------
    G : (p, p) tensor or array
    c : (p,) or (p, k) tensor or array
    alphas : (n_alphas,) array, best decreasing (warm starts)
    l1_ratio : float in [0, 1]
    positive : bool (non-negative coefficients)
    coef_init : (p,) or (p, k), optional (start of the first point)
    yty : float or (k,), optional
        ``yc'Wyc / weight_sum`` per target: when given, ``gaps`` are duality gaps (the largest
        over targets), else the largest violation of the optimality conditions.

    Returns
    -------
    coefs : tensor (n_alphas, p) or (n_alphas, p, k), float64 (on ``G``'s device)
    n_iter : list of int
        Active-set steps per alpha (largest over targets).
    gaps : list of float

    Examples
    --------
    >>> import torch
    >>> coefs, n_iter, gaps = gram_path(torch.eye(2), torch.tensor([1.0, 0.5]), [0.8, 0.2], 1.0)
    >>> coefs
    tensor([[0.2000, 0.0000],
            [0.8000, 0.3000]], dtype=torch.float64)
    """
    Gn, Cn = _as_numpy(G), _as_numpy(c)
    one = Cn.ndim == 1
    C = Cn.reshape(Cn.shape[0], -1)
    p, k = C.shape
    if Gn.shape != (p, p):
        raise ValueError(f"G must have shape ({p}, {p}) to match c; got {Gn.shape}.")
    a = np.asarray(alphas, dtype=np.float64).reshape(-1)
    if not (0 <= l1_ratio <= 1):
        raise ValueError(f"l1_ratio must be in [0, 1]; got {l1_ratio}.")
    if a.size and (not np.all(np.isfinite(a)) or a.min() < 0):
        raise ValueError("alphas must be finite and non-negative.")
    coefs = np.zeros((a.size, p, k))
    iters = np.zeros((a.size, k), dtype=np.int64)
    init = np.zeros((p, k)) if coef_init is None else _as_numpy(coef_init).reshape(p, k)
    if positive:
        init = np.clip(init, 0.0, None)
    for j in range(k):
        b = init[:, j]
        for i, alpha in enumerate(a):
            b, iters[i, j] = _solve_point(
                Gn, C[:, j], alpha * l1_ratio, alpha * (1 - l1_ratio), b, positive, tol, max_iter
            )
            coefs[i, :, j] = b
    gaps = _gram_path_gaps(Gn, C, a, l1_ratio, coefs, positive, yty)
    out = torch.from_numpy(coefs[:, :, 0] if one else coefs)
    if isinstance(G, torch.Tensor):
        out = out.to(G.device)
    return out, [int(v) for v in iters.max(axis=1, initial=0)], [float(g) for g in gaps]


def _gram_path_gaps(
    G: np.ndarray,
    C: np.ndarray,
    a: np.ndarray,
    l1_ratio: float,
    coefs: np.ndarray,
    positive: bool,
    yty: Any,
) -> np.ndarray:
    """gram_path's gaps: KKT violations, or the largest duality gap over targets."""
    if yty is None:
        return _path_kkt(G, C, a, l1_ratio, coefs, positive)
    if not a.size:
        return np.zeros(0)
    yy = _as_numpy(yty).reshape(-1)
    return np.max(
        [
            path_duality_gaps(G, C[:, j], float(yy[j]), a, l1_ratio, coefs[:, :, j], positive)
            for j in range(C.shape[1])
        ],
        axis=0,
    )


def _multitask_point(
    G: np.ndarray, C: np.ndarray, l1: float, l2: float, W: np.ndarray, lip: float, max_iter: int
) -> tuple[np.ndarray, int]:
    """Multi-task (L2,1) elastic net at one alpha: FISTA to find the support, then Newton on it."""
    step = 1.0 / max(lip + l2, float(np.finfo(float).tiny))
    Z, t, n_iter = W.copy(), 1.0, 0
    scale = max(float(np.abs(C).max(initial=0.0)), float(np.finfo(float).tiny))
    floor = 1e-9 * step * scale  # coefficient units: a change below it is round-off
    for n_iter in range(1, max_iter + 1):
        V = Z - step * (G @ Z - C + l2 * Z)
        norms = np.sqrt(np.sum(V**2, axis=1, keepdims=True))
        W_new = V * np.maximum(0.0, 1.0 - step * l1 / np.where(norms > 0, norms, 1.0))
        t_new = 0.5 * (1 + math.sqrt(1 + 4 * t * t))
        diff = W_new - W
        if float(np.sum((Z - W_new) * diff)) > 0:  # adaptive restart
            t_new, Z = 1.0, W_new
        else:
            Z = W_new + ((t - 1) / t_new) * diff
        W, t = W_new, t_new
        if n_iter % 20 == 0 and float(np.abs(diff).max()) <= 1e-7 * max(np.abs(W).max(), floor):
            for cand in (W, _multitask_newton(G, C, l1, l2, W)):
                if cand is not None and _multitask_kkt(G, C, l1, l2, cand) <= KKT_RTOL * scale:
                    return cand, n_iter
    return W, n_iter


def _multitask_newton(
    G: np.ndarray, C: np.ndarray, l1: float, l2: float, W: np.ndarray, steps: int = 30
) -> np.ndarray | None:
    """Newton's method on the stationarity equations of W's nonzero rows; None if it fails."""
    rows = np.flatnonzero(np.any(W != 0, axis=1))
    k = C.shape[1]
    if rows.size == 0:
        return W
    H0 = np.kron(G.take(rows, 0).take(rows, 1) + l2 * np.eye(rows.size), np.eye(k))
    x = W[rows].copy()
    for _ in range(steps):
        norms = np.sqrt(np.sum(x**2, axis=1, keepdims=True))
        if not np.all(norms > 0):
            return None
        u = x / norms
        F = G.take(rows, 0) @ _embed(W.shape, rows, x) - C[rows] + l2 * x + l1 * u
        H = H0.copy()
        for i, (nrm, ui) in enumerate(zip(norms[:, 0], u, strict=True)):
            H[i * k : (i + 1) * k, i * k : (i + 1) * k] += (l1 / nrm) * (
                np.eye(k) - np.outer(ui, ui)
            )
        try:
            dx = np.linalg.solve(H, F.reshape(-1)).reshape(x.shape)
        except np.linalg.LinAlgError:
            return None
        x = x - dx
        if float(np.abs(dx).max()) <= 1e-15 * max(float(np.abs(x).max()), 1e-300):
            break
    return _embed(W.shape, rows, x)


def _embed(shape: tuple[int, ...], rows: np.ndarray, x: np.ndarray) -> np.ndarray:
    out = np.zeros(shape)
    out[rows] = x
    return out


def _multitask_kkt(G: np.ndarray, C: np.ndarray, l1: float, l2: float, W: np.ndarray) -> float:
    """Largest violation of the multi-task optimality conditions."""
    g = C - G @ W - l2 * W
    norms = np.sqrt(np.sum(W**2, axis=1))
    active = norms > 0
    u = W / np.where(active, norms, 1.0)[:, None]
    viol = np.where(
        active, np.sqrt(np.sum((g - l1 * u) ** 2, axis=1)), np.sqrt(np.sum(g**2, axis=1)) - l1
    )
    return float(np.maximum(viol, 0.0).max(initial=0.0))


def _resolve_alphas(n_alphas: Any, alphas: Any) -> Any:
    """scikit-learn 1.9's ``n_alphas`` / ``alphas`` deprecation: an int count or an array."""
    count: Any = 100
    if not (isinstance(n_alphas, str) and n_alphas == "deprecated"):
        warnings.warn(
            "'n_alphas' was deprecated in 1.9 and will be removed in 1.11. 'alphas' now "
            "accepts an integer value which removes the need to pass 'n_alphas'.",
            FutureWarning,
            stacklevel=3,
        )
        count = n_alphas
    if alphas is None:
        warnings.warn(
            "'alphas=None' is deprecated and will be removed in 1.11, at which point the "
            "default value will be set to 100. Set 'alphas=100' to silence this warning.",
            FutureWarning,
            stacklevel=3,
        )
    elif not (isinstance(alphas, str) and alphas == "warn"):
        count = alphas
    if isinstance(count, numbers.Integral) and not isinstance(count, bool) and int(count) >= 1:
        return int(count)
    if isinstance(count, str | bool | numbers.Real):
        raise ValueError(f"alphas must be an int >= 1 or an array of alphas; got {count!r}.")
    arr = np.asarray(count, dtype=np.float64).reshape(-1)
    if arr.size == 0 or not np.all(np.isfinite(arr)) or arr.min() < 0:
        raise ValueError("alphas must be a non-empty array of finite, non-negative values.")
    return np.sort(arr)[::-1] if arr.size > 1 else arr


def _path_inputs(
    X: Any, y: Any, precompute: Any, Xy: Any, check_input: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool, Any]:
    """(G, C, yty, y_1d, dtype) with ``G = X'X / n``, ``C = X'y / n`` and ``yty = y'y / n``."""
    from regtorch._validation import as_float_tensor, check_X_y_tensors

    dtype = getattr(X, "dtype", None)  # float32 in, float32 out (as scikit-learn)
    if check_input:
        Xt = as_float_tensor(X, name="X", dtype=torch.float64)
        yt = as_float_tensor(y, name="y", dtype=torch.float64)
        y_1d = yt.ndim == 1
        Xt, yt = check_X_y_tensors(Xt, yt)
        Xn, Yn = Xt.numpy(), yt.numpy()
    else:
        Xn, Yn = _as_numpy(X), _as_numpy(y)
        y_1d = Yn.ndim == 1
        Yn = Yn.reshape(Yn.shape[0], -1)
    n, p = Xn.shape
    if isinstance(precompute, str | bool | np.bool_):
        if not (isinstance(precompute, str) and precompute == "auto") and not isinstance(
            precompute, bool | np.bool_
        ):
            raise ValueError(
                f"precompute must be 'auto', a bool or a Gram matrix; got {precompute!r}."
            )
        G = Xn.T @ Xn / n
    else:
        G = _as_numpy(precompute) / n
        if check_input and (G.shape != (p, p) or not np.all(np.isfinite(G))):
            raise ValueError(
                f"The Gram matrix (precompute) must be finite with shape ({p}, {p}); got {G.shape}."
            )
        if check_input and not np.allclose(G, G.T, rtol=1e-7, atol=0):
            raise ValueError("The Gram matrix (precompute) is not symmetric.")
    if Xy is None:
        C = Xn.T @ Yn / n
    else:
        C = _as_numpy(Xy).reshape(p, -1) / n
        if check_input and (C.shape[1] != Yn.shape[1] or not np.all(np.isfinite(C))):
            raise ValueError(f"Xy must be finite with shape ({p},) or ({p}, {Yn.shape[1]}).")
    yty = np.sum(Yn**2, axis=0) / n
    return G, C, yty, y_1d, dtype if dtype in (np.float32, np.float64) else np.float64


def _enet_params(params: dict[str, Any], l1_ratio: Any, eps: Any) -> tuple[float, int]:
    """(tol, max_iter) from enet_path's ``**params``; refuses what it cannot honour."""
    if not (isinstance(l1_ratio, numbers.Real) and 0 <= float(l1_ratio) <= 1):
        raise ValueError(f"l1_ratio must be a float in [0, 1]; got {l1_ratio!r}.")
    if not (isinstance(eps, numbers.Real) and float(eps) > 0):
        raise ValueError(f"eps must be a float > 0; got {eps!r}.")
    tol = float(params.pop("tol", 1e-4))
    max_iter = int(params.pop("max_iter", 1000))
    for ignored in ("random_state", "selection", "do_screening", "X_offset", "X_scale"):
        params.pop(ignored, None)  # coordinate-descent options and sparse-data offsets
    if params.pop("sample_weight", None) is not None:
        raise ValueError(
            "enet_path does not take sample_weight; pass sqrt(sample_weight) * X and y, or "
            "use ElasticNet(...).fit(X, y, sample_weight=...)."
        )
    if params:
        raise ValueError(f"Unexpected parameters in params: {sorted(params)}")
    return tol, max_iter


def enet_path(
    X: Any,
    y: Any,
    *,
    l1_ratio: float = 0.5,
    eps: float = 1e-3,
    n_alphas: Any = "deprecated",
    alphas: Any = "warn",
    precompute: Any = "auto",
    Xy: Any = None,
    copy_X: bool = True,
    coef_init: Any = None,
    verbose: bool | int = False,
    return_n_iter: bool = False,
    positive: bool = False,
    check_input: bool = True,
    **params: Any,
) -> tuple[Any, ...]:
    """Elastic-net path, with scikit-learn's signature, objective and return values.

    Minimises ``1 / (2 n) ||y - Xw||^2 + alpha * l1_ratio * |w|_1
    + 0.5 * alpha * (1 - l1_ratio) * |w|^2`` (the multi-task L2,1 penalty for 2-D ``y``) at
    each alpha, without an intercept. Each point is solved exactly on the Gram (an active-set
    method) rather than by coordinate descent: ``tol``, ``max_iter``, ``selection`` and
    ``random_state`` in ``params`` are accepted, ``copy_X`` and ``verbose`` have no effect
    (X is never written; the library does not print). ``sample_weight`` is refused: weight
    the rows (``sqrt(w) * X``) or use :class:`ElasticNet`.

    Returns
    -------
    alphas : (n_alphas,) ndarray, decreasing
    coefs : (n_features, n_alphas) or (n_targets, n_features, n_alphas) ndarray
    dual_gaps : (n_alphas,) ndarray
    n_iters : list of int
        Active-set steps per alpha (only with ``return_n_iter=True``).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> alphas, coefs, gaps = enet_path(X, np.array([1.0, 2.0, 3.0]), alphas=[0.1])
    >>> coefs.shape
    (2, 1)
    """
    tol, max_iter = _enet_params(params, l1_ratio, eps)
    count = _resolve_alphas(n_alphas, alphas)
    G, C, yty, y_1d, dtype = _path_inputs(X, y, precompute, Xy, check_input)
    p, k = C.shape
    if not y_1d and positive:
        raise ValueError("positive=True is not allowed for multi-output (y.ndim != 1)")
    if isinstance(count, int):
        a = alpha_grid(path_c_max(C, positive), float(l1_ratio), float(eps), count)
    else:
        a = count
    init = None if coef_init is None else _as_numpy(coef_init)
    if init is not None and init.size != p * k:
        raise ValueError(
            f"coef_init must have {p * k} values (n_targets x n_features); got {init.size}."
        )
    if y_1d:
        coefs, iters, path_gaps = gram_path(
            G,
            C[:, 0],
            a,
            float(l1_ratio),
            positive=bool(positive),
            tol=tol,
            max_iter=max(max_iter, 1000),
            coef_init=init,
            yty=yty,
        )
        gaps = np.asarray(path_gaps)
        out = coefs.numpy().T.astype(dtype)  # (p, n_alphas)
    else:
        W, iters = _multitask_path(G, C, a, float(l1_ratio), init, max(max_iter, 10_000))
        gaps = path_duality_gaps(G, C, float(yty.sum()), a, float(l1_ratio), W)
        out = np.transpose(W, (2, 1, 0)).astype(dtype)  # (k, p, n_alphas)
    result = (a, out, np.asarray(gaps, dtype=np.float64))
    return (*result, list(iters)) if return_n_iter else result


def _multitask_path(
    G: np.ndarray, C: np.ndarray, alphas: np.ndarray, l1_ratio: float, init: Any, max_iter: int
) -> tuple[np.ndarray, list[int]]:
    """Multi-task path (n_alphas, p, k), warm-started along the alphas."""
    p, k = C.shape
    W = np.zeros((p, k)) if init is None else init.reshape(k, p).T.copy()
    lip = float(np.linalg.eigvalsh(G)[-1]) if p else 1.0
    out = np.zeros((alphas.size, p, k))
    iters = []
    for i, alpha in enumerate(alphas):
        W, it = _multitask_point(G, C, alpha * l1_ratio, alpha * (1 - l1_ratio), W, lip, max_iter)
        out[i] = W
        iters.append(it)
    return out, iters


def lasso_path(
    X: Any,
    y: Any,
    *,
    eps: float = 1e-3,
    n_alphas: Any = "deprecated",
    alphas: Any = "warn",
    precompute: Any = "auto",
    Xy: Any = None,
    copy_X: bool = True,
    coef_init: Any = None,
    verbose: bool | int = False,
    return_n_iter: bool = False,
    positive: bool = False,
    **params: Any,
) -> tuple[Any, ...]:
    """Lasso path: :func:`enet_path` with ``l1_ratio=1`` (scikit-learn's signature).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> alphas, coefs, gaps = lasso_path(X, np.array([1.0, 2.0, 3.0]), alphas=3)
    >>> alphas.shape, coefs.shape
    ((3,), (2, 3))
    """
    return enet_path(
        X,
        y,
        l1_ratio=1.0,
        eps=eps,
        n_alphas=n_alphas,
        alphas=alphas,
        precompute=precompute,
        Xy=Xy,
        copy_X=copy_X,
        coef_init=coef_init,
        verbose=verbose,
        return_n_iter=return_n_iter,
        positive=positive,
        **params,
    )
