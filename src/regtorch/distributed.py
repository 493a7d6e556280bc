"""Rank and world helpers for ``torchrun`` launches: process-group set-up and tear-down.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` (or a rendezvous
endpoint); :func:`init_from_env` joins that group with gloo (CPU) or NCCL (CUDA) and a
timeout, so that a rank that dies makes the others fail with an error instead of hanging.
"""

from __future__ import annotations

import datetime
import os

import torch

__all__ = ["init_from_env", "is_distributed", "rank", "shutdown", "world_size"]


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
    use_nccl = device.startswith("cuda") and torch.cuda.is_available()
    if use_nccl:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(
        backend="nccl" if use_nccl else "gloo",
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return dist.get_world_size() > 1


def shutdown() -> None:
    """Leave the process group (no-op outside one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
