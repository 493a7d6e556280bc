"""Model files: safetensors for tensors, JSON (in the safetensors header) for the rest.

The only module that writes models. Loading never unpickles: it verifies the SHA-256 of the
tensors and of the metadata recorded at saving, accepts only the classes of an allow-list,
checks tensor names, shapes, dtypes and finiteness against the metadata, and checks that the
declared network is the one whose weights the file holds before building the estimator.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regtorch._files import IntegrityError, dump_safetensors, write_bytes_atomic
from regtorch.exceptions import DataWarning

__all__ = ["ModelFileError", "load", "save"]

FORMAT = "regtorch-model"
FORMAT_VERSION = 1
LINEAR_CLASSES = ("LinearRegression", "Ridge", "Lasso", "ElasticNet")
CV_CLASSES = ("RidgeCV", "LassoCV", "ElasticNetCV")
ALLOWED = (*LINEAR_CLASSES, *CV_CLASSES, "MLPRegressor")
# the cross-validation results a CV model file keeps (tensors) beside coef and intercept
CV_ARRAYS = ("alphas_", "mse_path_", "mse_se_", "score_path_", "coef_path_")
CV_SCALARS = ("alpha_", "l1_ratio_", "best_score_", "cv_folds_", "n_iter_", "dual_gap_")


class ModelFileError(ValueError):
    """A model file is missing, truncated, altered, or of an unknown kind."""


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, tuple):
        return list(v)
    return v


def _tensors_of(est: Any) -> dict[str, torch.Tensor]:
    name = type(est).__name__
    if name in CV_CLASSES:
        out = {
            "coef": torch.as_tensor(np.atleast_2d(est.coef_), dtype=torch.float64),
            "intercept": torch.as_tensor(np.atleast_1d(est.intercept_), dtype=torch.float64),
        }
        for a in CV_ARRAYS:
            if getattr(est, a, None) is not None:
                v = np.asarray(getattr(est, a), dtype=np.float64)
                out[a.rstrip("_")] = torch.as_tensor(np.ascontiguousarray(v))
        return out
    if name in LINEAR_CLASSES:
        out = {
            "coef": torch.as_tensor(np.atleast_2d(est.coef_), dtype=torch.float64),
            "intercept": torch.as_tensor(np.atleast_1d(est.intercept_), dtype=torch.float64),
        }
        R = getattr(est, "_R", None)
        if R is not None:
            out["R"] = R.detach().cpu().to(torch.float64)
        bse_unit = getattr(est, "_bse_unit", None)  # the solver's extended-precision SEs
        if bse_unit is not None:
            out["bse_unit"] = torch.as_tensor(np.asarray(bse_unit, dtype=np.float64))
        info = getattr(est, "_fit_info", None)
        if info is not None:
            out["X_offset"] = torch.as_tensor(info["X_offset"], dtype=torch.float64)
        return out
    out = {f"module.{k}": v.detach().cpu() for k, v in est.module_.state_dict().items()}
    for attr in ("x_mean_", "x_scale_", "y_mean_", "y_scale_"):
        out[attr.rstrip("_")] = torch.as_tensor(np.asarray(getattr(est, attr), dtype=np.float64))
    return out


def _params_of(est: Any) -> dict[str, Any]:
    """The JSON-able parameters; a CV model's explicit folds are kept as their number."""
    params = {k: _jsonable(v) for k, v in est.get_params().items() if k != "callbacks"}
    cv = params.get("cv", None)
    if type(est).__name__ in CV_CLASSES and not (cv is None or isinstance(cv, int)):
        # index arrays or a splitter: the fitted model needs neither, only how many folds
        params["cv"] = int(getattr(est, "cv_folds_", None) or est.mse_path_.shape[-1])
    # callbacks watch a training run; they are not part of the model
    return params


def _cv_attributes(est: Any) -> dict[str, Any]:
    """A CV model's JSON attributes: the chosen alpha (l1_ratio, score) and the folds."""
    attrs: dict[str, Any] = {"y_1d": bool(np.ndim(est.coef_) == 1)}
    for a in CV_SCALARS:
        if getattr(est, a, None) is not None:
            attrs[a] = _jsonable(getattr(est, a))
    return attrs


def save(
    estimator: Any,
    path: str | os.PathLike[str],
    *,
    extra: dict[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Save a fitted regtorch estimator to one file, atomically.

    Parameters
    ----------
    estimator : LinearRegression, Ridge, Lasso, ElasticNet, RidgeCV, LassoCV, ElasticNetCV
        or MLPRegressor
        Fitted. A CV model keeps its alphas, CV errors (``mse_path_``) and coefficient
        path; explicit folds (index arrays, a splitter) are kept as their number.
    path : path
        Destination (conventionally ``*.safetensors``).
    extra : dict, optional
        JSON-able metadata kept with the model (the CLI stores the data encoder, target
        and metrics there).
    overwrite : bool
        With False, an existing file is an error.

    Examples
    --------
    >>> import numpy as np, regtorch, tempfile, os
    >>> m = regtorch.LinearRegression().fit(np.eye(3), [1.0, 2.0, 3.0])
    >>> p = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> np.allclose(regtorch.load(save(m, p)).predict(np.eye(3)), m.predict(np.eye(3)))
    True
    """
    from sklearn.utils.validation import check_is_fitted

    import regtorch

    name = type(estimator).__name__
    if name not in ALLOWED:
        raise TypeError(f"Cannot save {name}: only {', '.join(ALLOWED)} are supported.")
    check_is_fitted(estimator)
    out = Path(path)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; use --force (overwrite=True) to replace it.")
    tensors = {k: v.contiguous() for k, v in _tensors_of(estimator).items()}
    attrs: dict[str, Any] = {"n_features_in_": int(estimator.n_features_in_)}
    if hasattr(estimator, "feature_names_in_"):
        attrs["feature_names_in_"] = [str(f) for f in estimator.feature_names_in_]
    if name in CV_CLASSES:
        attrs.update(_cv_attributes(estimator))
    elif name in LINEAR_CLASSES:
        attrs["y_1d"] = bool(np.ndim(estimator.coef_) == 1)
        for a in ("rank_", "solver_", "n_iter_"):
            if hasattr(estimator, a):
                attrs[a] = _jsonable(getattr(estimator, a))
        info = getattr(estimator, "_fit_info", None)
        if info is not None:
            attrs["fit_info"] = {k: _jsonable(v) for k, v in info.items() if k != "X_offset"}
    else:
        attrs.update(
            architecture=repr(estimator.module_),
            y_1d=bool(estimator._y_1d),
            n_outputs=int(estimator._n_outputs),
            n_iter_=int(estimator.n_iter_),
            best_epoch_=int(estimator.best_epoch_),
        )
    if hasattr(estimator, "history_"):
        attrs["history"] = estimator.history_.to_dict()
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "class": name,
        "params": _params_of(estimator),
        "attributes": attrs,
        "tensors": {
            k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
            for k, v in tensors.items()
        },
        "versions": {"regtorch": regtorch.__version__, "torch": torch.__version__},
        "extra": extra or {},
    }
    return write_bytes_atomic(out, dump_safetensors(tensors, meta))


def read_metadata(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and verify a model file's metadata and tensors (no estimator is built)."""
    from regtorch._files import read_safetensors

    p = Path(path)
    if p.is_dir():  # the folder `regtorch fit --out DIR` wrote
        p = p / "model.safetensors"
    if not p.is_file():
        raise ModelFileError(f"Model file {p} does not exist.")
    try:
        meta, tensors, verified = read_safetensors(p.read_bytes())
    except IntegrityError as exc:
        raise ModelFileError(f"{p}: {exc}; refused.") from exc
    except ValueError as exc:
        raise ModelFileError(
            f"{p} is not a valid regtorch model file ({exc}); refit and save it again."
        ) from exc
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{p} is not a regtorch model file.")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{p} has model format {meta.get('format_version')}; this regtorch reads "
            f"{FORMAT_VERSION}."
        )
    cls = meta.get("class")
    if cls not in ALLOWED:
        raise ModelFileError(
            f"{p} declares class {cls!r}, which is not one of {', '.join(ALLOWED)}; refused."
        )
    declared = meta.get("tensors", {})
    if not isinstance(declared, dict) or set(declared) != set(tensors):
        raise ModelFileError(f"{p}: its tensors do not match its metadata; refused.")
    for k, t in tensors.items():
        spec = declared[k]
        if not isinstance(spec, dict):
            raise ModelFileError(f"{p}: the metadata of tensor {k} are malformed; refused.")
        if list(t.shape) != spec.get("shape") or str(t.dtype).replace("torch.", "") != spec.get(
            "dtype"
        ):
            raise ModelFileError(
                f"{p}: tensor {k} has shape {list(t.shape)} and dtype {t.dtype}, but the "
                f"metadata say {spec.get('shape')} and {spec.get('dtype')}; refused."
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelFileError(f"{p}: tensor {k} holds NaN or infinite values; refused.")
    if not verified:
        warnings.warn(
            f"{p} carries no integrity hash (it was written by an older regtorch), so an "
            "alteration cannot be detected; save it again to add one.",
            DataWarning,
            stacklevel=3,
        )
    return meta, tensors


def load(path: str | os.PathLike[str]) -> Any:
    """Load an estimator saved by :func:`save`; ``extra`` metadata is in ``model_extra_``.

    Raises
    ------
    ModelFileError
        For a missing, truncated or altered file, an unknown class, or tensors that do not
        match the metadata.
    """
    meta, tensors = read_metadata(path)
    try:
        est = _build(meta, tensors)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        # a KeyError's text is the bare key: say what is missing
        why = f"{exc.args[0]!s} is missing" if isinstance(exc, KeyError) and exc.args else exc
        raise ModelFileError(f"{path}: the model could not be rebuilt ({why}); refused.") from exc
    return est


def _check_extra(extra: Any, n_features: int) -> dict[str, Any]:
    """The CLI's metadata (encoder, target) must be well formed and fit the model."""
    if not isinstance(extra, dict):
        raise ValueError("'extra' metadata must be an object")
    enc = extra.get("encoder")
    if enc is not None:
        from regtorch.data.schema import Encoder

        cats = enc.get("categories", {}) if isinstance(enc, dict) else None
        ok = (
            isinstance(enc, dict)
            and isinstance(enc.get("features"), list)
            and all(isinstance(f, str) for f in enc["features"])
            and isinstance(cats, dict)
            and all(
                isinstance(k, str) and isinstance(v, list) and all(isinstance(c, str) for c in v)
                for k, v in cats.items()
            )
            and enc.get("unknown", "error") in ("error", "ignore")
        )
        if not ok:
            raise ValueError("the data encoder in the metadata is malformed")
        if len(Encoder.from_dict(enc).output_names) != n_features:
            raise ValueError("the data encoder does not match the model's number of features")
    target = extra.get("target")
    if target is not None and not (
        isinstance(target, list) and all(isinstance(t, str) for t in target)
    ):
        raise ValueError("the target names in the metadata are malformed")
    return extra


def _restore_linear(
    est: Any, attrs: dict[str, Any], tensors: dict[str, torch.Tensor], coef: Any, y_1d: bool
) -> Any:
    """Hand a linear model's stored state to its ``_set_fitted`` (the one writer)."""
    from regtorch.linear.estimators import ElasticNet, LinearFit

    k = coef.shape[0]
    coef_t = torch.as_tensor(coef).mT
    intercept = tensors["intercept"].reshape(-1)
    if est.fit_intercept and intercept.numel() != k:
        raise ValueError(f"intercept has {intercept.numel()} values for {k} targets")
    if not est.fit_intercept:
        intercept = torch.zeros(k, dtype=coef_t.dtype)
    if isinstance(est, ElasticNet):
        n_iter = np.atleast_1d(np.asarray(attrs.get("n_iter_", 0), dtype=np.int64))
        if len(n_iter) != k:
            raise ValueError(f"n_iter_ has {len(n_iter)} values for {k} targets")
        est._set_fitted(coef_t, intercept, y_1d, [int(v) for v in n_iter], [math.nan] * k)
        return est
    bse_unit = tensors.get("bse_unit")
    n_params = coef.shape[1] + int(bool(est.fit_intercept))
    if bse_unit is not None and list(bse_unit.shape) != [n_params]:
        raise ValueError(f"bse_unit has shape {list(bse_unit.shape)} for {n_params} parameters")
    if "fit_info" not in attrs:
        raise ValueError("the fit statistics (fit_info) are missing")
    info = dict(attrs["fit_info"])
    info["sse"] = np.asarray(info["sse"], dtype=np.float64)
    info["sst"] = np.asarray(info["sst"], dtype=np.float64)
    info["X_offset"] = tensors["X_offset"].numpy()
    fit = LinearFit(
        coef_t,
        intercept,
        int(attrs.get("rank_", coef.shape[1])),
        str(attrs.get("solver_", "unknown")),
        info,
        tensors.get("R"),
        None if bse_unit is None else bse_unit.numpy(),
        int(attrs.get("n_iter_", 1)),
        getattr(est, "history_", None),
    )
    est._set_fitted(fit, y_1d)
    return est


def _cv_state(
    attrs: dict[str, Any], tensors: dict[str, torch.Tensor], coef: Any, y_1d: bool
) -> dict[str, Any]:
    """A CV model's stored results, checked against each other (shapes, the chosen alpha)."""
    k, p = coef.shape
    arrays = {a: tensors[a.rstrip("_")].numpy() for a in CV_ARRAYS if a.rstrip("_") in tensors}
    alphas = arrays.get("alphas_")
    if alphas is None or alphas.size == 0 or not (alphas > 0).all():
        raise ValueError("the alphas tried are missing or not positive")
    for alpha in np.atleast_1d(np.asarray(attrs["alpha_"], dtype=np.float64)):
        if not np.isclose(alphas, alpha, rtol=1e-12, atol=0).any():
            raise ValueError(f"the chosen alpha {float(alpha)!r} is not one of the alphas tried")
    n_alphas = alphas.shape[-1]
    path = arrays.get("mse_path_")
    se = arrays.get("mse_se_")
    if path is not None and n_alphas == 1 and path.ndim == alphas.ndim:
        # squeezed as scikit-learn squeezes it: the alpha axis back, for the checks
        path = path[..., None, :]
    # alphas (n_alphas,) or (n_l1, n_alphas); mse_path (..., n_alphas, n_folds)
    if path is not None and (
        path.ndim < 2
        or path.shape[-2] != n_alphas
        or (alphas.ndim == 2 and path.shape[:2] != alphas.shape)
    ):
        raise ValueError(f"mse_path has shape {list(path.shape)} for alphas {list(alphas.shape)}")
    if path is not None and se is not None and se.size != int(np.prod(path.shape[:-1])):
        raise ValueError(f"mse_se has shape {list(se.shape)} for mse_path {list(path.shape)}")
    folds = attrs.get("cv_folds_")
    if folds is not None and (
        not isinstance(folds, int)
        or isinstance(folds, bool)
        or folds < 2
        or (path is not None and path.shape[-1] not in (1, folds))  # 1: leave-one-out
    ):
        shape = None if path is None else list(path.shape)
        raise ValueError(f"cv_folds_ {folds!r} is not a number of folds matching mse_path {shape}")
    l1 = attrs.get("l1_ratio_")
    if l1 is not None and not (
        isinstance(l1, (int, float)) and not isinstance(l1, bool) and 0 <= l1 <= 1
    ):
        raise ValueError(f"l1_ratio_ {l1!r} is not a number in [0, 1]")
    coef_path = arrays.get("coef_path_")
    # (n_alphas, p), or (n_alphas, k, p) for RidgeCV with several targets
    want = [(n_alphas, p)] + ([(n_alphas, k, p)] if k > 1 else [])
    if coef_path is not None and tuple(coef_path.shape) not in want:
        raise ValueError(f"coef_path has shape {list(coef_path.shape)} for {n_alphas} alphas")
    intercept = tensors["intercept"].reshape(-1)
    if intercept.numel() != k:
        raise ValueError(f"intercept has {intercept.numel()} values for {k} targets")
    scalars = {a: attrs[a] for a in CV_SCALARS if a in attrs}
    return {"coef": coef, "intercept": intercept.numpy(), "y_1d": y_1d, **arrays, **scalars}


def _float_or_array(v: Any) -> float | np.ndarray:
    return float(v) if np.ndim(v) == 0 else np.asarray(v, dtype=np.float64)


def _cv_fitted_args(est: Any, state: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of the CV class's ``_set_fitted`` from a stored state."""
    coef = torch.as_tensor(state["coef"]).mT  # (p, k), as the fits hand it over
    intercept = torch.as_tensor(state["intercept"])
    if type(est).__name__ == "RidgeCV":
        from regtorch.linear.ridgecv import RidgeCVFit

        n_alphas = state["alphas_"].shape[0]
        for a in ("mse_se_", "score_path_"):
            if state[a].shape[0] != n_alphas:
                raise ValueError(f"{a.rstrip('_')} does not match the {n_alphas} alphas")
        fit = RidgeCVFit(
            coef,
            intercept,
            _float_or_array(state["alpha_"]),
            _float_or_array(state["best_score_"]),
            state["alphas_"],
            state["mse_path_"],
            state["mse_se_"],
            state["score_path_"],
            int(state["cv_folds_"]),
        )
        if "coef_path" in {f.name for f in dataclasses.fields(fit)}:
            fit.coef_path = state.get("coef_path_")  # type: ignore[attr-defined,unused-ignore]
        return {"fit": fit, "y_1d": state["y_1d"]}
    if state["mse_path_"].shape[-1] < 2:
        raise ValueError("the CV error path has fewer than 2 folds")
    return {
        "coef": coef,
        "intercept": intercept,
        "alphas": state["alphas_"],
        "mse_path": state["mse_path_"],
        "alpha": float(state["alpha_"]),
        "l1_ratio": float(state.get("l1_ratio_", 1.0)),
        "coef_path": state["coef_path_"],
        "n_iter": int(state["n_iter_"]),
        "dual_gap": float(state["dual_gap_"]),
    }


def _cv_class(name: str) -> Any:
    from regtorch.linear.cv import ElasticNetCV, LassoCV
    from regtorch.linear.ridgecv import RidgeCV

    return {c.__name__: c for c in (RidgeCV, LassoCV, ElasticNetCV)}[name]


def _build(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    from regtorch.linear.estimators import ElasticNet, Lasso, LinearRegression, Ridge
    from regtorch.nn.loop import History
    from regtorch.nn.mlp import MLPRegressor

    classes = {c.__name__: c for c in (LinearRegression, Ridge, Lasso, ElasticNet, MLPRegressor)}
    cls = _cv_class(meta["class"]) if meta["class"] in CV_CLASSES else classes[meta["class"]]
    params = dict(meta["params"])
    if "hidden_layer_sizes" in params and isinstance(params["hidden_layer_sizes"], list):
        params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
    est = cls(**params)
    est._check_params()  # edited parameters are refused like bad ones passed to fit
    attrs = meta["attributes"]
    p = int(attrs["n_features_in_"])
    est.model_extra_ = _check_extra(meta.get("extra", {}), p)
    est.n_features_in_ = p
    if "feature_names_in_" in attrs:
        est.feature_names_in_ = np.asarray(attrs["feature_names_in_"], dtype=object)
    if "history" in attrs:
        est.history_ = History.from_dict(attrs["history"])
    if meta["class"] in (*LINEAR_CLASSES, *CV_CLASSES):
        coef = tensors["coef"].numpy()
        if coef.shape[1] != p:
            raise ValueError(f"coef has {coef.shape[1]} columns for {p} features")
        y_1d = bool(attrs["y_1d"])
        if y_1d and coef.shape[0] != 1:
            raise ValueError(f"one target declared, but coef has {coef.shape[0]} rows")
        if meta["class"] in CV_CLASSES:
            est._set_fitted(**_cv_fitted_args(est, _cv_state(attrs, tensors, coef, y_1d)))
            return est
        return _restore_linear(est, attrs, tensors, coef, y_1d)
    from regtorch.nn.modules import MLP

    sizes = params["hidden_layer_sizes"]
    sizes = (sizes,) if isinstance(sizes, int) else tuple(sizes)
    # the declared network must be the one stored: a header declaring a giant network is
    # refused before anything of its size is allocated
    widths = [p, *(int(s) for s in sizes), int(attrs["n_outputs"])]
    declared = sum((a + 1) * b for a, b in zip(widths, widths[1:]))
    stored = sum(t.numel() for k, t in tensors.items() if k.startswith("module."))
    if min(widths) < 1 or declared != stored:
        raise ValueError(
            f"the parameters declare a network of {declared:,} weights, but the file holds "
            f"{stored:,}"
        )
    module = MLP(p, sizes, int(attrs["n_outputs"]), params["activation"])
    state = {k[len("module.") :]: v for k, v in tensors.items() if k.startswith("module.")}
    module.load_state_dict(state, strict=True)
    if attrs.get("architecture") != repr(module):
        raise ValueError("the parameters do not describe the network stored in the file")
    if bool(attrs["y_1d"]) and int(attrs["n_outputs"]) != 1:
        raise ValueError("one target declared, but the network has several outputs")
    if "history" not in attrs:
        raise ValueError("the training history is missing")
    history = History.from_dict(attrs["history"])
    n_iter, best_epoch = int(attrs["n_iter_"]), int(attrs["best_epoch_"])
    # Ctrl-C in the first epoch leaves no complete epoch: the initial weights, "epoch 0"
    if len(history) != n_iter or (n_iter < 1 and not history.interrupted):
        raise ValueError("the training history does not match n_iter_")
    first = min(1, n_iter)
    if not first <= best_epoch <= n_iter:
        raise ValueError(f"best_epoch_ {best_epoch} is outside {first}..{n_iter}")
    x_mean, x_scale, y_mean, y_scale = (
        tensors[a].numpy() for a in ("x_mean", "x_scale", "y_mean", "y_scale")
    )
    if len(x_mean) != p or len(y_mean) != int(attrs["n_outputs"]):
        raise ValueError("the stored scaling does not match the network's inputs and outputs")
    assert isinstance(est, MLPRegressor)
    est._set_fitted(
        module,
        x_mean,
        x_scale,
        y_mean,
        y_scale,
        history,
        best_epoch=best_epoch,
        y_1d=bool(attrs["y_1d"]),
    )
    return est
