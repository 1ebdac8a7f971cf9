"""Distributed start and stop for every launcher the catalog uses, on CPU (gloo) and GPU (nccl).

accelerate, torchrun and deepspeed all export RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; what
differs is who owns the process group. Accelerate-based entry points call `make_accelerator`; plain
torch ones call `init_distributed`. Both end with `shutdown`, because gloo aborts at interpreter exit
while a DDP wrapper still holds the group.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from repro.base.device import cuda_usable
from repro.base.errors import ReproError


@dataclass(frozen=True)
class LaunchInfo:
    rank: int
    world_size: int
    local_rank: int
    launcher: str  # accelerate | deepspeed | torchrun | python

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_info(env: dict[str, str] | None = None) -> LaunchInfo:
    env = os.environ if env is None else env
    if "ACCELERATE_MIXED_PRECISION" in env or "ACCELERATE_DYNAMO_BACKEND" in env:
        launcher = "accelerate"
    elif "CROSS_RANK" in env and "LOCAL_SIZE" in env:  # deepspeed.launcher.launch exports these
        launcher = "deepspeed"
    elif "TORCHELASTIC_RUN_ID" in env:
        launcher = "torchrun"
    else:
        launcher = "python"
    try:
        return LaunchInfo(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)),
                          int(env.get("LOCAL_RANK", 0)), launcher)
    except ValueError as exc:
        raise ReproError(f"launcher environment is malformed: {exc}") from None


def device(info: LaunchInfo):
    import torch

    return torch.device("cuda", info.local_rank) if cuda_usable() else torch.device("cpu")


def init_distributed(timeout_s: int = 1800) -> LaunchInfo:
    """Process group for plain-torch entry points (nccl on GPU, gloo on CPU); no-op for one process."""
    import torch
    import torch.distributed as dist

    info = launch_info()
    if cuda_usable():
        torch.cuda.set_device(info.local_rank)
    if info.world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda_usable() else "gloo", timeout=timedelta(seconds=timeout_s))
    return info


def make_accelerator(**kwargs: Any):
    """An Accelerator that cannot silently be one process: on CPU cpu=True and fp32 (without cpu=True,
    `--multi_gpu` on CPU gives N unsynchronised single processes), and the process count it sees must
    equal the launcher's WORLD_SIZE."""
    from accelerate import Accelerator

    if not cuda_usable():
        kwargs.update(cpu=True, mixed_precision="no")
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed, imported lazily, stays quiet
    accelerator = Accelerator(**kwargs)
    world = launch_info().world_size
    if accelerator.num_processes != world:
        raise ReproError(f"accelerate sees {accelerator.num_processes} process(es) but WORLD_SIZE={world}")
    return accelerator


def shutdown(accelerator=None, *objects: Any) -> None:
    """Free wrappers, then destroy the process group: the clean gloo exit."""
    import torch.distributed as dist

    if accelerator is not None:
        accelerator.free_memory(*objects)
    del objects
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
