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
from typing import TYPE_CHECKING, Any

import torch

from regtorch import distributed
from regtorch._files import IntegrityError, dump_safetensors, write_bytes_atomic
from regtorch.exceptions import DataWarning

if TYPE_CHECKING:
    from regtorch.nn.loop import TrainState

__all__ = ["CheckpointError", "load_checkpoint", "restore", "save_checkpoint"]

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
            DataWarning,
            stacklevel=2,
        )
    return dict(payload)


def restore(state: TrainState, path: str | os.PathLike[str], lr_schedule: str | None) -> int:
    """Load a checkpoint into the loop's objects; return the epoch to start from."""
    ck = load_checkpoint(path)
    try:
        _check_fits(state, ck, path, lr_schedule)
        return _restore_from(state, ck)
    except CheckpointError:
        raise
    except (KeyError, TypeError, AttributeError, RuntimeError, ValueError, IndexError) as exc:
        raise CheckpointError(
            f"Checkpoint {path} does not fit this run ({type(exc).__name__}: {exc}); it was "
            "not loaded. Resume with the same model and arguments, or start again."
        ) from exc


def _check_fits(
    state: TrainState, ck: dict[str, Any], path: str | os.PathLike[str], lr_schedule: str | None
) -> None:
    """Refuse, with the reason, a checkpoint of another run."""
    if int(ck["epochs"]) != state.epochs:
        raise CheckpointError(
            f"Checkpoint {path} belongs to a run of {ck['epochs']} epochs, not {state.epochs}: "
            "resume with the same arguments."
        )
    done = int(ck["epoch"])
    hist = _history(ck)
    if not 1 <= done <= state.epochs or len(hist.train_loss) != done or len(hist.lr) != done:
        raise CheckpointError(f"Checkpoint {path} has an inconsistent epoch count; not loaded.")
    if (state._val_buf is None) != (not hist.val_loss):
        raise CheckpointError(
            f"Checkpoint {path} was written {'with' if hist.val_loss else 'without'} "
            "validation data: resume with the same arguments."
        )
    saved = [str(name) for name, _ in ck["callbacks"]]
    stateful = [type(cb).__name__ for cb in state.callbacks if cb.state_dict()]
    if stateful != saved:
        raise CheckpointError(
            f"Checkpoint {path} was written with callbacks {saved} holding state; this run "
            f"has {stateful}: resume with the same ones."
        )
    if state.scheduler is not None and ck["scheduler"] is None:
        raise CheckpointError(f"Checkpoint {path} was written without lr_schedule={lr_schedule!r}.")
    if state.batches is not None and "batches" in ck:
        try:
            state.batches.load_state_dict(ck["batches"])
        except ValueError as exc:
            raise CheckpointError(f"Checkpoint {path} does not fit this run: {exc}.") from None


def _restore_from(state: TrainState, ck: dict[str, Any]) -> int:
    done = int(ck["epoch"])
    hist = _history(ck)
    state.module.load_state_dict(ck["module"])
    opt_state = ck["optimizer"]
    opt_state["state"] = {int(k): v for k, v in opt_state["state"].items()}
    state.optimizer.load_state_dict(opt_state)
    if state.scheduler is not None:
        state.scheduler.load_state_dict(ck["scheduler"])
    gens = ck.get("generators")
    rank = distributed.rank()
    # this rank's generator (a checkpoint of one process: the only one)
    own = gens[rank] if gens is not None and len(gens) > rank else ck["generator"]
    state.generator.set_state(own.clone())  # a row of the stack: set_state needs its own storage
    state._train_buf[:done] = torch.tensor(hist.train_loss, dtype=state._train_buf.dtype)
    if state._val_buf is not None:
        state._val_buf[:done] = torch.tensor(hist.val_loss, dtype=state._val_buf.dtype)
    state.times.extend(hist.time)
    state.lrs.extend(hist.lr)
    state.start_time -= hist.time[-1] if hist.time else 0.0
    stateful = [cb for cb in state.callbacks if cb.state_dict()]
    for cb, (_, cb_state) in zip(stateful, ck["callbacks"]):
        cb.load_state_dict(cb_state)
    state.epoch = done - 1
    state.stop = bool(ck.get("stopped", False))
    return done


def _history(ck: dict[str, Any]) -> Any:
    from regtorch.nn.loop import History

    return History.from_dict(ck["history"])
