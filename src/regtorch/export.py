"""Export fitted estimators: a plain ``torch.nn.Module``, an ONNX file, a ``torch.export`` program.

:func:`to_torch` builds a module of torch operations and registered tensors only (no regtorch
class inside) that maps raw feature values, ``(n_samples, n_features)``, to predictions,
``(n_samples,)`` for a model fitted on a 1-D target, else ``(n_samples, n_targets)``; an
MLP's stored standardisation of inputs and targets is part of the graph.
:func:`export_onnx` writes it as ONNX (``torch.onnx.export``, the ``torch.export``-based
exporter; needs the optional extra ``pip install "regtorch[export]"``) and
:func:`export_pt2` as a ``torch.export`` program (``torch.export.save``); both have a
dynamic batch dimension, carry the feature names and the model's description as metadata,
check the written program against the module on sample rows, and write atomically.

Models fitted by ``regtorch fit --categorical onehot`` are not given text columns: the
exported graph expects the one-hot *encoded* columns (``city=Paris``, ...), in the order of
``feature_names``; the metadata key ``input_encoding`` holds the encoder (input columns and
their levels) and ``input_note`` says this in words.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "EXPORT_EXTRA",
    "ExportedRegressor",
    "METADATA_FILE",
    "export_metadata",
    "export_onnx",
    "export_pt2",
    "to_torch",
]

EXPORT_EXTRA = 'pip install "regtorch[export]"'
METADATA_FILE = "regtorch.json"  # the pt2 archive's extra file holding the metadata
LINEAR_CLASSES = (
    "LinearRegression",
    "Ridge",
    "Lasso",
    "ElasticNet",
    "LassoCV",
    "ElasticNetCV",
    "RidgeCV",
)
ONNX_INPUT, ONNX_OUTPUT = "features", "prediction"
ONNX_OPSET = 20  # IR version 10: onnx >= 1.16 and onnxruntime >= 1.17 read it
ONNX_LIMIT_BYTES = 2**31 - 2**24  # protobuf's 2 GiB limit, with room for the graph itself
# the written program must reproduce the module on sample rows to this relative error
# (of the largest prediction): far above float32 reordering, far below a wrong operator
CHECK_RTOL = 1e-4
CHECK_ROWS = 7


class ExportedRegressor(nn.Module):
    """Raw features ``(n, n_features)`` -> predictions ``(n,)`` or ``(n, n_outputs)``.

    Computes ``net(x / x_scale - x_center) * y_scale + y_center``; a step whose tensor is
    ``None`` is left out of the graph. Built by :func:`to_torch`; the attributes
    ``feature_names``, ``n_features``, ``n_outputs``, ``output_1d``, ``model_class``,
    ``target_names`` and ``input_encoding`` describe the expected input and the output.
    """

    x_scale: torch.Tensor | None
    x_center: torch.Tensor | None
    y_scale: torch.Tensor | None
    y_center: torch.Tensor | None

    def __init__(
        self,
        net: nn.Module,
        scaling: tuple[torch.Tensor | None, ...],
        *,
        output_1d: bool,
        info: dict[str, Any],
    ) -> None:
        super().__init__()
        self.net = net
        for name, t in zip(("x_scale", "x_center", "y_scale", "y_center"), scaling):
            self.register_buffer(name, t)
        self.output_1d = bool(output_1d)
        self.feature_names: list[str] = list(info["feature_names"])
        self.n_features = len(self.feature_names)
        self.n_outputs = int(info["n_outputs"])
        self.model_class = str(info["model_class"])
        self.target_names: list[str] | None = info.get("target_names")
        self.input_encoding: dict[str, Any] | None = info.get("input_encoding")

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point type of the inputs, weights and outputs."""
        return next(t for t in (*self.parameters(), *self.buffers())).dtype

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = features
        if self.x_scale is not None:
            z = z / self.x_scale
        if self.x_center is not None:
            z = z - self.x_center
        out = self.net(z)
        if self.y_scale is not None:
            out = out * self.y_scale
        if self.y_center is not None:
            out = out + self.y_center
        return out[:, 0] if self.output_1d else out


def _feature_names(est: Any) -> list[str]:
    names = getattr(est, "feature_names_in_", None)
    if names is not None:
        return [str(n) for n in names]
    return [f"x{i}" for i in range(int(est.n_features_in_))]


def _info(est: Any, n_outputs: int) -> dict[str, Any]:
    """What the exporters record: names, class, targets and the CLI's encoder (if any)."""
    extra = getattr(est, "model_extra_", None) or {}
    enc = extra.get("encoder")
    target = extra.get("target")
    return {
        "feature_names": _feature_names(est),
        "n_outputs": n_outputs,
        "model_class": type(est).__name__,
        "target_names": [str(t) for t in target] if target else None,
        # only a one-hot encoding changes what the graph expects; plain columns pass as they are
        "input_encoding": enc if isinstance(enc, dict) and enc.get("categories") else None,
    }


def _cast(a: Any, dtype: torch.dtype, what: str) -> torch.Tensor:
    """``a`` as a tensor of ``dtype``; ValueError if a value does not fit in it."""
    t = torch.as_tensor(np.asarray(a, dtype=np.float64)).to(dtype)
    if not torch.isfinite(t).all():
        raise ValueError(
            f"The model's {what} has values outside the range of {dtype}; export it with "
            "dtype=torch.float64 (to_torch(est, dtype=torch.float64))."
        )
    return t


def _linear_module(est: Any, dtype: torch.dtype) -> ExportedRegressor:
    coef = np.atleast_2d(np.asarray(est.coef_, dtype=np.float64))  # (k, p)
    intercept = np.broadcast_to(np.asarray(est.intercept_, dtype=np.float64), (coef.shape[0],))
    # Centre the inputs on the training means when they are known: the intercept then holds
    # the mean prediction and the products are of centred values, so a float32 graph does
    # not lose the predictions to the cancellation of large terms.
    info = getattr(est, "_fit_info", None) or {}
    center = np.asarray(info.get("X_offset", np.zeros(coef.shape[1])), dtype=np.float64)
    if center.shape != (coef.shape[1],) or not np.isfinite(center).all():
        center = np.zeros(coef.shape[1])
    x_center = _cast(center, dtype, "training means")
    # the intercept for the centre the graph subtracts (rounded to dtype), not the exact mean
    center = x_center.double().numpy()
    linear = nn.Linear(coef.shape[1], coef.shape[0], dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(_cast(coef, dtype, "coefficients"))
        linear.bias.copy_(_cast(intercept + coef @ center, dtype, "intercept"))
    return ExportedRegressor(
        linear,
        (None, x_center if center.any() else None, None, None),
        output_1d=np.ndim(est.coef_) == 1,
        info=_info(est, coef.shape[0]),
    )


def _mlp_module(est: Any, dtype: torch.dtype) -> ExportedRegressor:
    from regtorch.nn.modules import MLP

    # the torch layers themselves (MLP.forward is net(X)), so that no regtorch class is inside
    net = est.module_.net if isinstance(est.module_, MLP) else est.module_
    net = copy.deepcopy(net).to(device="cpu", dtype=dtype).eval()
    net.requires_grad_(False)
    x_scale = np.asarray(est.x_scale_, dtype=np.float64)
    # as MLPRegressor.predict: x / scale - mean / scale, which cannot overflow
    x_center = np.asarray(est.x_mean_, dtype=np.float64) / x_scale
    scaling = (
        _cast(x_scale, dtype, "input scale"),
        _cast(x_center, dtype, "input mean"),
        _cast(est.y_scale_, dtype, "target scale"),
        _cast(est.y_mean_, dtype, "target mean"),
    )
    return ExportedRegressor(
        net, scaling, output_1d=bool(est._y_1d), info=_info(est, len(est.y_mean_))
    )


def to_torch(est: Any, dtype: torch.dtype = torch.float32) -> ExportedRegressor:
    """A plain ``torch.nn.Module`` that predicts like ``est`` from raw feature values.

    Parameters
    ----------
    est : LinearRegression, Ridge, Lasso, ElasticNet or MLPRegressor
        Fitted (in memory or by :func:`regtorch.load`).
    dtype : torch.dtype
        ``torch.float32`` (default) or ``torch.float64``.

    Returns
    -------
    ExportedRegressor
        On the CPU, in eval mode, without gradients; input ``(n, est.n_features_in_)``,
        output ``(n,)`` for a model fitted on a 1-D target, else ``(n, n_targets)``.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        If ``est`` is not fitted.

    Examples
    --------
    >>> import numpy as np, torch, regtorch
    >>> from regtorch.export import to_torch
    >>> est = regtorch.LinearRegression().fit([[0.0], [1.0], [2.0]], [1.0, 3.0, 5.0])
    >>> to_torch(est)(torch.tensor([[0.0], [1.0], [2.0]])).tolist()
    [1.0, 3.0, 5.0]
    """
    from sklearn.utils.validation import check_is_fitted

    name = type(est).__name__
    if name not in (*LINEAR_CLASSES, "MLPRegressor"):
        raise TypeError(
            f"Cannot export {name}: only LinearRegression, Ridge, Lasso, ElasticNet and "
            "MLPRegressor are supported."
        )
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64; got {dtype}.")
    if name == "MLPRegressor":
        check_is_fitted(est, "module_")
        module = _mlp_module(est, dtype)
    else:
        check_is_fitted(est, "coef_")
        module = _linear_module(est, dtype)
    module.requires_grad_(False)
    return module.eval()


def _as_module(model: Any) -> ExportedRegressor:
    return model if isinstance(model, ExportedRegressor) else to_torch(model)


def export_metadata(module: ExportedRegressor) -> dict[str, str]:
    """What an exported file records about its input and output (string values: ONNX's
    ``metadata_props`` and the pt2 archive's ``regtorch.json``)."""
    import regtorch

    k = module.n_outputs
    meta = {
        "producer": "regtorch",
        "regtorch_version": regtorch.__version__,
        "model_class": module.model_class,
        "dtype": str(module.dtype).replace("torch.", ""),
        "n_features": str(module.n_features),
        "feature_names": json.dumps(module.feature_names),
        "output_shape": "(n,)" if module.output_1d else f"(n, {k})",
        "input_note": input_note(module),
    }
    if module.target_names:
        meta["target_names"] = json.dumps(module.target_names)
    if module.input_encoding:
        meta["input_encoding"] = json.dumps(module.input_encoding)
    return meta


def input_note(module: ExportedRegressor) -> str:
    """One sentence on what the graph's input columns are."""
    enc = module.input_encoding
    if not enc:
        return (
            "the graph expects raw feature values, in the order of feature_names (the "
            "model's standardisation is built in)"
        )
    cats = enc["categories"]
    col, levels = next(iter(cats.items()))
    example = (
        f"'{col}={levels[1]}' is 1.0 where {col} is {levels[1]!r}, else 0.0"
        if len(levels) > 1
        else ""
    )
    refs = ", ".join(f"{c}={lv[0]}" for c, lv in cats.items() if lv)
    return (
        f"the graph expects the one-hot ENCODED columns of feature_names, not the text column(s) "
        f"{', '.join(cats)}: {example}; the first level of each text column ({refs}) is "
        "the reference and has no column; numeric columns pass unchanged; the metadata "
        "key input_encoding lists every level"
    )


def _check_destination(path: str | os.PathLike[str], overwrite: bool) -> Path:
    out = Path(path)
    if out.is_dir():
        raise IsADirectoryError(
            f"{out} is a folder; give the file to write, e.g. {out}/model.onnx."
        )
    if not out.parent.is_dir():
        raise FileNotFoundError(f"The folder {out.parent} does not exist; create it first.")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; use --force (overwrite=True) to replace it.")
    return out


def _require_onnx() -> Any:
    """Import onnx, onnxscript and onnxruntime, or say which extra installs them."""
    mods = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            mods.append(importlib.import_module(name))
        except ImportError as exc:
            raise ImportError(
                f"ONNX export needs the optional packages onnx, onnxscript and onnxruntime "
                f"({name} cannot be imported: {exc}); install them with {EXPORT_EXTRA}."
            ) from exc
    return mods[0]


def _sample_rows(module: ExportedRegressor, n: int = CHECK_ROWS) -> torch.Tensor:
    """Rows around the training data (seeded): the inputs the written program is checked on."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, module.n_features, generator=g, dtype=torch.float64)
    scale = module.x_scale if module.x_scale is not None else 1.0
    center = module.x_center if module.x_center is not None else 0.0
    # the inverse of the module's input step: x = (z + center) * scale
    return ((z + center) * scale).to(module.dtype)


def _check_same(got: np.ndarray, module: ExportedRegressor, x: torch.Tensor, what: str) -> None:
    with torch.no_grad():
        want = module(x).double().numpy()
    tol = CHECK_RTOL * max(float(np.abs(want).max()), float(np.finfo(np.float32).tiny))
    if got.shape != want.shape or not (np.abs(got - want) <= tol).all():
        raise RuntimeError(
            f"The {what} does not reproduce the model's predictions on sample rows "
            "(shape or values differ); nothing was written. Please report this."
        )


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's notices (deprecations inside torch, optional torchvision ops):
    they are about torch's internals, not the model."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        log.setLevel(level)


def _batch_dim() -> Any:
    # min=1: a batch of one row is valid; the example batch has 2 rows, since torch.export
    # specialises a dimension whose example size is 1
    return {"features": {0: torch.export.Dim("batch", min=1)}}


def export_onnx(model: Any, path: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
    """Write a fitted estimator (or a :func:`to_torch` module) as an ONNX file.

    The graph's input ``features`` is ``(batch, n_features)`` in the module's dtype (float32
    by default), its output ``prediction`` is ``(batch,)`` or ``(batch, n_targets)``; the
    batch dimension is dynamic. The model's ``metadata_props`` hold
    :func:`export_metadata` (feature names, class, regtorch version, input note). The file
    is checked with onnxruntime against the module before it replaces ``path``, atomically.

    Raises
    ------
    ImportError
        Without onnx, onnxscript or onnxruntime; the message names ``regtorch[export]``.

    Examples
    --------
    >>> import numpy as np, onnxruntime, regtorch, tempfile, os
    >>> est = regtorch.LinearRegression().fit([[0.0], [1.0], [2.0]], [1.0, 3.0, 5.0])
    >>> p = export_onnx(est, os.path.join(tempfile.mkdtemp(), "m.onnx"))
    >>> s = onnxruntime.InferenceSession(p, providers=["CPUExecutionProvider"])
    >>> s.run(None, {"features": np.array([[0.0], [1.0], [2.0]], np.float32)})[0].round(4).tolist()
    [1.0, 3.0, 5.0]
    """
    onnx = _require_onnx()
    import onnxruntime

    module = _as_module(model)
    out = _check_destination(path, overwrite)
    n_bytes = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    if n_bytes > ONNX_LIMIT_BYTES:
        raise ValueError(
            f"The model's weights take {n_bytes / 2**30:.1f} GiB, more than an ONNX file can "
            "hold (2 GiB); export it with --format pt2 (export_pt2)."
        )
    x = _sample_rows(module)
    with _quiet_exporter():
        program = torch.onnx.export(
            module,
            (x[:2],),
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            dynamic_shapes=_batch_dim(),
            dynamo=True,
            opset_version=ONNX_OPSET,
            verbose=False,
        )
    assert program is not None  # dynamo=True always returns the program
    proto = program.model_proto
    del proto.metadata_props[:]
    for key, value in export_metadata(module).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    _check_same(session.run(None, {ONNX_INPUT: x.numpy()})[0], module, x, "ONNX file")
    from regtorch._files import write_bytes_atomic

    return write_bytes_atomic(out, data)


def export_pt2(model: Any, path: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
    """Write a fitted estimator (or a :func:`to_torch` module) as a ``torch.export`` program.

    Load it with ``torch.export.load(path).module()``; its one argument is the features
    ``(batch, n_features)`` (dynamic batch dimension). The archive's extra file
    ``regtorch.json`` holds :func:`export_metadata`. The program is reloaded and checked
    against the module before it replaces ``path``, atomically.

    Examples
    --------
    >>> import numpy as np, torch, regtorch, tempfile, os
    >>> est = regtorch.LinearRegression().fit([[0.0], [1.0], [2.0]], [1.0, 3.0, 5.0])
    >>> p = export_pt2(est, os.path.join(tempfile.mkdtemp(), "m.pt2"))
    >>> torch.export.load(p).module()(torch.tensor([[0.0], [1.0], [2.0]])).round(decimals=4).tolist()
    [1.0, 3.0, 5.0]
    """
    module = _as_module(model)
    out = _check_destination(path, overwrite)
    x = _sample_rows(module)
    with _quiet_exporter():
        program = torch.export.export(module, (x[:2],), dynamic_shapes=_batch_dim())
    buf = io.BytesIO()
    meta = json.dumps(export_metadata(module), indent=1)
    torch.export.save(program, buf, extra_files={METADATA_FILE: meta})
    data = buf.getvalue()
    with _quiet_exporter():
        reloaded = torch.export.load(io.BytesIO(data)).module()
    with torch.no_grad():
        _check_same(reloaded(x).double().numpy(), module, x, "torch.export program")
    from regtorch._files import write_bytes_atomic

    return write_bytes_atomic(out, data)
