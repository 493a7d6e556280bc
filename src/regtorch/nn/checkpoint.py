"""Training checkpoints: safetensors for tensors, JSON (in the safetensors header) for the rest.

A checkpoint holds what an exact resume needs: the module's weights, the optimizer's state,
the scheduler's position, the batch-order generator, the history so far and the callbacks'
state. Files are written atomically with a SHA-256 of their tensors and metadata; a truncated
or altered file is refused with a clear error, never half-loaded. Nothing is unpickled.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from regtorch._files import IntegrityError, dump_safetensors, write_bytes_atomic

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint"]

FORMAT = "regtorch-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, altered or of another format."""


def _flatten(prefix: str, obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Move tensors (also inside lists and dicts) into ``tensors``; return a JSON skeleton."""
    if isinstance(obj, torch.Tensor):
        name = f"{prefix}"
        tensors[name] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": name}
    if isinstance(obj, dict):
        return {str(k): _flatten(f"{prefix}.{k}", v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_flatten(f"{prefix}.{i}", v, tensors) for i, v in enumerate(obj)]
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return {"__float__": "nan"}
    return obj


def _unflatten(skel: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skel, dict):
        if "__tensor__" in skel:
            return tensors[skel["__tensor__"]]
        if "__float__" in skel:
            return float(skel["__float__"])
        return {k: _unflatten(v, tensors) for k, v in skel.items()}
    if isinstance(skel, list):
        return [_unflatten(v, tensors) for v in skel]
    return skel


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` (nested dicts/lists of tensors and JSON values) atomically."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten("ckpt", payload, tensors)
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "payload": skeleton}
    return write_bytes_atomic(path, dump_safetensors(tensors, meta))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    CheckpointError
        If the file is missing, truncated, not a regtorch checkpoint, or holds non-finite
        weights.
    """
    from regtorch._files import read_safetensors

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"Checkpoint {p} does not exist.")
    try:
        meta, tensors, verified = read_safetensors(p.read_bytes())
        if not isinstance(meta.get("payload"), dict):
            raise ValueError("no regtorch payload in the header")
        payload = _unflatten(meta["payload"], tensors)
    except IntegrityError as exc:
        raise CheckpointError(f"Checkpoint {p}: {exc}; it was not loaded.") from exc
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"Checkpoint {p} is truncated or corrupt ({exc}); it was not loaded. Resume from "
            "an earlier checkpoint or start again."
        ) from exc
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{p} is not a regtorch checkpoint of format {FORMAT_VERSION}.")
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"Checkpoint {p} holds non-finite values in {name}.")
    if not verified:
        warnings.warn(
            f"Checkpoint {p} carries no integrity hash (it was written by an older regtorch), "
            "so an alteration cannot be detected.",
            UserWarning,
            stacklevel=2,
        )
    return dict(payload)
