"""Training an MLP on a table streamed from disk, under ``torchrun`` too."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from regtorch import distributed
from regtorch.data.readers import DataError
from regtorch.data.split import hash01
from regtorch.data.table import TableSource
from regtorch.linear.moments import _accumulate
from regtorch.nn.loop import _num_threads

__all__ = ["stream_fit_mlp"]


def stream_fit_mlp(
    estimator: Any,
    source: TableSource,
    *,
    missing: str = "error",
    test_fraction: float = 0.0,
    val_fraction: float = 0.1,
    seed: int = 0,
    shuffle_rows: int | None = None,
    max_val_rows: int = 200_000,
    progress: bool = False,
) -> dict[str, Any]:
    """Train an ``MLPRegressor`` on a table streamed from disk, epoch after epoch.

    A first pass computes the standardisation statistics of the training rows. Each epoch
    visits this rank's row groups in a seeded order and draws mini-batches from a bounded
    shuffle buffer (``shuffle_rows``, from the memory budget). Rows are split by a seeded hash
    of their index: test (``test_fraction``), validation (next ``val_fraction``, at most
    ``max_val_rows`` per rank kept in memory) and training. Under ``torchrun`` the module is
    wrapped in ``DistributedDataParallel`` (gloo on CPU, NCCL on CUDA) and each rank takes
    ``batch_size / world_size`` rows per step and every rank takes the same number of steps
    per epoch (the fewest any rank can fill), so each step averages exactly the global batch.
    The weights of the epoch with the lowest validation loss are kept.
    """
    import copy

    from torch.nn.parallel import DistributedDataParallel

    from regtorch.nn.loop import History, init_module, make_optimizer, make_scheduler
    from regtorch.nn.mlp import MLPRegressor
    from regtorch.nn.modules import MLP

    if type(estimator) is not MLPRegressor:
        raise ValueError(f"stream_fit_mlp trains an MLPRegressor, got {type(estimator).__name__}.")
    estimator._check_params()
    if estimator.solver == "lbfgs":
        raise ValueError(
            "solver='lbfgs' needs full batches; streamed training uses adam, adamw or sgd."
        )
    rank, world = distributed.rank_world()
    p, k = len(source.features), len(source.targets)
    lo, hi = test_fraction, test_fraction + val_fraction
    # the first optimizer step loads torch's compiler stack (~75 MiB, measured): load it
    # before the budget is split, so that it counts as held
    warm = torch.nn.Parameter(torch.zeros(1))
    warm.grad = torch.zeros(1)
    make_optimizer(estimator.solver, [warm], 1e-3).step()
    spare = source.spare_bytes("to train a network")

    def part(rows: np.ndarray) -> np.ndarray:
        return hash01(rows, seed)

    t0 = time.perf_counter()
    moments, _ = _accumulate(source, lambda r: part(r) >= hi, missing, progress, "statistics")
    local_rows = moments.n
    moments = moments.all_reduce(p + k)
    if moments.n < 2 or moments.mean is None or moments.C is None:
        raise DataError(f"{source.path}: fewer than 2 training rows.")
    # the state holds Z times a per-column power of two (exact): back to the data's units
    scale = getattr(moments, "scale", None)
    sc = torch.ones_like(moments.mean) if scale is None else scale
    mean = (moments.mean / sc).numpy()
    std = np.sqrt(np.maximum((moments.C.diagonal() / sc**2).numpy() / moments.n, 0.0))
    if not estimator.standardize:
        mean, std = np.zeros_like(mean), np.ones_like(std)
    std = np.where(std > 0, std, 1.0)
    x_mean, x_scale, y_mean, y_scale = mean[:p], std[:p], mean[p:], std[p:]

    from regtorch._validation import resolve_device

    dev = resolve_device(estimator.device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", torch.cuda.current_device())  # set by init_from_env

    def scaled(Z: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((Z - mean) / std).astype(np.float32)).to(dev)

    # validation rows, bounded
    # the validation rows and, later, the shuffle buffer come out of the memory budget too
    row_bytes = 4 * (p + k) * 3
    max_val_rows = int(min(max_val_rows, spare // 4 // row_bytes))
    val_parts, kept = [], 0
    for b in source.batches(missing):
        h = part(b.rows)
        sel = (h >= lo) & (h < hi)
        if sel.any() and kept < max_val_rows:
            val_parts.append(scaled(b.Z[sel][: max_val_rows - kept]))
            kept += len(val_parts[-1])
    V = torch.cat(val_parts) if val_parts else torch.zeros(0, p + k, device=dev)

    sizes = estimator.hidden_layer_sizes
    sizes = (sizes,) if isinstance(sizes, int) else tuple(sizes)
    module = MLP(p, sizes, k, estimator.activation)
    init_module(module, seed)
    module.to(dev)
    model: torch.nn.Module = module
    if world > 1:
        model = DistributedDataParallel(
            module, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    bs, epochs = estimator._plan(int(moments.n))
    local_bs = max(1, (bs or 1024) // world)
    global_bs = local_bs * world
    # every rank takes the same number of steps per epoch (the fewest any rank can fill), so
    # each step averages exactly `global_bs` rows across ranks
    n_steps = int(distributed.reduce_min(local_rows // local_bs))
    if n_steps < 1:
        raise DataError(
            f"A rank has fewer than {local_bs} training rows: use fewer processes (at most one "
            f"per Parquet row group; this table has {len(source.units) or 'few'}) or a smaller "
            "--batch-size."
        )
    lr = float(estimator.lr if estimator.lr is not None else estimator.learning_rate_init)
    opt = make_optimizer(estimator.solver, model.parameters(), lr, float(estimator.alpha))
    sched = make_scheduler(estimator.lr_schedule, opt, epochs)
    buffer_rows = int(
        shuffle_rows or max(local_bs * 8, min(source.batch_rows * 4, spare // 4 // row_bytes))
    )
    gen = torch.Generator().manual_seed(seed * 1000 + rank)
    loss_fn = torch.nn.MSELoss()
    hist = History()
    best, best_state, best_epoch = math.inf, None, 0

    taken = 0

    def steps(buf: torch.Tensor) -> tuple[float, int]:
        nonlocal taken
        total, n = 0.0, 0
        perm = torch.randperm(len(buf), generator=gen).to(dev)
        for i in range(0, len(buf) - local_bs + 1, local_bs):
            if taken >= n_steps:
                break
            taken += 1
            zb = buf[perm[i : i + local_bs]]
            opt.zero_grad(set_to_none=True)
            out = loss_fn(model(zb[:, :p]), zb[:, p:])
            out.backward()
            opt.step()
            total += float(out.detach()) * len(zb)
            n += len(zb)
        return total, n

    with _num_threads(None):
        for epoch in range(epochs):
            module.train()
            lrs = float(opt.param_groups[0]["lr"])
            total, count, taken = 0.0, 0, 0
            carry = torch.zeros(0, p + k, device=dev)
            for b in source.batches(missing, epoch_seed=seed * 7919 + epoch):
                if taken >= n_steps:
                    break
                sel = part(b.rows) >= hi
                if not sel.any():
                    continue
                carry = torch.cat([carry, scaled(b.Z[sel])])
                if len(carry) >= buffer_rows:
                    used = (len(carry) // local_bs) * local_bs
                    t_, n_ = steps(carry[:used])
                    total, count = total + t_, count + n_
                    carry = carry[used:]
            if len(carry) >= local_bs and taken < n_steps:
                t_, n_ = steps(carry)
                total, count = total + t_, count + n_
            if sched is not None:
                sched.step()
            module.eval()
            with torch.inference_mode():
                vs = float(((module(V[:, :p]) - V[:, p:]) ** 2).mean(1).sum()) if len(V) else 0.0
            t_sum, t_n, v_sum, v_n = distributed.reduce_sum([total, count, vs, float(len(V))])
            train_loss = t_sum / max(t_n, 1)
            val_loss = v_sum / v_n if v_n else math.nan
            if not math.isfinite(train_loss):
                raise ValueError(
                    f"Training diverged at epoch {epoch + 1}: the loss became {train_loss}. "
                    f"Lower the learning rate (it was {lr:g})."
                )
            hist.train_loss.append(train_loss)
            hist.lr.append(lrs)
            hist.time.append(time.perf_counter() - t0)
            if v_n:
                hist.val_loss.append(val_loss)
            score = val_loss if v_n else train_loss
            if score < best:
                best, best_epoch = score, epoch + 1
                best_state = copy.deepcopy(module.state_dict())
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    estimator.n_features_in_ = p
    estimator.feature_names_in_ = np.asarray(source.features, dtype=object)
    estimator.x_mean_, estimator.x_scale_ = x_mean, x_scale
    estimator.y_mean_, estimator.y_scale_ = y_mean, y_scale
    estimator.module_ = module
    estimator._module64 = copy.deepcopy(module).to(device="cpu", dtype=torch.float64).eval()
    estimator.history_ = hist
    estimator.n_iter_ = len(hist)
    estimator.loss_curve_ = list(hist.train_loss)
    estimator.best_epoch_ = best_epoch or len(hist)
    estimator._n_outputs = k
    estimator._y_1d = k == 1
    distributed.barrier()
    return {
        "rows_fit": int(moments.n),
        "seconds": time.perf_counter() - t0,
        "epochs": len(hist),
        "global_batch": global_bs,
        "batch_rows": source.batch_rows,
    }
