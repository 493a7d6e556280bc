"""Every collective regtorch uses, and the process-group set-up and tear-down for ``torchrun``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` (or a rendezvous
endpoint); :func:`init_from_env` joins that group with gloo (CPU) or NCCL (CUDA) and a
timeout, so that a rank that dies makes the others fail with an error instead of hanging.
"""

from __future__ import annotations

import datetime
import os

import torch

__all__ = [
    "all_gather",
    "barrier",
    "init_from_env",
    "is_distributed",
    "rank",
    "rank_world",
    "reduce_min",
    "reduce_sum",
    "shutdown",
    "world_size",
]


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of ranks (1 outside a process group)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def init_from_env(device: str = "cpu", timeout_s: float = 300.0) -> bool:
    """Join the process group ``torchrun`` describes in the environment, if any.

    Returns True when a group of several ranks was joined (or already existed).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build.")
    use_nccl = _uses_cuda(device)
    if use_nccl:
        torch.cuda.set_device(_local_device())
    # with CUDA, NCCL moves the gradients and gloo the small CPU tensors of the collectives
    # below (statistics, losses, generator states), which NCCL cannot take
    backend = "cpu:gloo,cuda:nccl" if use_nccl else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    store = _attempt_store(timeout)
    if store is None:
        dist.init_process_group(backend=backend, timeout=timeout)
    else:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        dist.init_process_group(
            backend=backend, timeout=timeout, store=store, rank=rank, world_size=world
        )
    return dist.get_world_size() > 1


def _uses_cuda(device: str | torch.device | None) -> bool:
    """Whether a fit on ``device`` runs on CUDA ("auto" does where CUDA is available)."""
    name = "auto" if device is None else str(device)
    return (name == "auto" or name.startswith("cuda")) and torch.cuda.is_available()


def _local_device() -> int:
    """This rank's CUDA device: ``LOCAL_RANK``, checked against the visible devices.

    An explicit ``cuda:N`` is the same on every rank; the ranks of a node cannot share one
    GPU under NCCL, so the group always binds each rank to its local GPU.
    """
    from regtorch._validation import resolve_device

    index = resolve_device("cuda").index
    return 0 if index is None else int(index)


def _attempt_store(timeout: datetime.timedelta) -> torch.distributed.Store | None:
    """After a ``torchrun --max-restarts`` restart, the launcher's store under this attempt's
    prefix: the keys the dead attempt left there would otherwise connect the new ranks to
    the old ones' addresses, and the group would hang."""
    import torch.distributed as dist

    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart in (None, "0") or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    client = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        int(os.environ["WORLD_SIZE"]),
        is_master=False,
        timeout=timeout,
    )
    return dist.PrefixStore(f"regtorch/attempt_{restart}", client)


def shutdown() -> None:
    """Leave the process group (no-op outside one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` outside a process group."""
    return rank(), world_size()


def all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``t`` (same shape on all ranks), in rank order; ``[t]`` outside a group.

    Callers merge the parts in rank order, so every rank computes the same result.
    """
    import torch.distributed as dist

    if not is_distributed():
        return [t]
    t = t.contiguous()
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t)
    return parts


def reduce_min(value: float) -> float:
    """The smallest ``value`` over ranks (identity outside a process group)."""
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return float(t[0])


def reduce_sum(values: list[float]) -> list[float]:
    """Sum floats over ranks (identity outside a process group)."""
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if is_distributed():
        dist.all_reduce(t)
    return [float(v) for v in t.tolist()]


def barrier() -> None:
    """Wait for every rank (no-op outside a process group)."""
    import torch.distributed as dist

    if is_distributed():
        dist.barrier()
