"""Distributed start and stop for every launcher the catalog uses, on CPU (gloo) and GPU (nccl).

accelerate, torchrun and deepspeed all export RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; what
differs is who owns the process group. Accelerate-based entry points call `make_accelerator`; plain
torch ones call `init_distributed`. Both end with `shutdown`, because gloo aborts at interpreter exit
while a DDP wrapper still holds the group.

Rank -> device binding (`bind`, pure, tested with a faked device count): on CPU every rank uses the CPU
over gloo; on a GPU rank r binds cuda:r over NCCL, one GPU per rank. With REPRO_SHARED_DEVICE=1 (the GPU
lane sets it when a twin has more ranks than GPUs) every rank binds cuda:0 over gloo instead: NCCL refuses
two ranks on one device ("Duplicate GPU detected"), while gloo declares CUDA support in torch 2.13
(`Backend.backend_capability["gloo"] == ["cpu", "cuda"]`) and moves CUDA tensors through host memory.
`enter_shared_device` (called by `run_main` before any trainer code) makes that hold for every library
the trainers use: it sets LOCAL_RANK=0 (accelerate, the HF Trainer and DeepSpeed all pick their device
from the local rank; the launcher's value is kept in REPRO_LAUNCH_LOCAL_RANK) and opens the gloo process
group first, which accelerate, DeepSpeed's TorchBackend and the fms/granite trainers then reuse.
DEVIATION (shared mode only): every rank is "local rank 0", so per-node local-main-first duties run on
every rank; the twins keep their data in memory, so nothing races on a shared file.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from repro.base.device import cuda_usable, shared_device
from repro.base.errors import ReproError

LAUNCH_LOCAL_RANK_ENV = "REPRO_LAUNCH_LOCAL_RANK"


@dataclass(frozen=True)
class Binding:
    device: str  # "cpu" or "cuda:<index>"
    backend: str  # the process-group backend for more than one rank
    shared: bool  # ranks share cuda:0

    @property
    def index(self) -> int | None:
        return int(self.device.split(":")[1]) if self.device.startswith("cuda:") else None


def bind(local_rank: int, world_size: int, cuda: bool, device_count: int, shared: bool) -> Binding:
    """The device and backend of one rank (see the module docstring); a rank without a GPU of its own and
    without the shared mode is refused in one line instead of failing inside CUDA."""
    if not cuda:
        return Binding("cpu", "gloo", False)
    if device_count < 1:
        raise ReproError("CUDA is usable but torch reports no device")
    if shared:
        return Binding("cuda:0", "gloo", world_size > 1)
    if local_rank >= device_count:
        raise ReproError(f"local rank {local_rank} needs cuda:{local_rank} but this machine has {device_count} "
                         f"GPU(s); run with REPRO_SHARED_DEVICE=1 to put every rank on cuda:0 over gloo "
                         "(repro gpu-ci does this where a twin needs more ranks than GPUs)")
    return Binding(f"cuda:{local_rank}", "nccl", False)


def current_binding(info: "LaunchInfo | None" = None) -> Binding:
    info = info or launch_info()
    cuda = cuda_usable()
    count = 0
    if cuda:
        import torch

        count = torch.cuda.device_count()
    return bind(info.local_rank, info.world_size, cuda, count, shared_device())


def enter_shared_device(env: dict | None = None, init=None, set_device=None) -> Binding | None:
    """In the shared mode on a GPU with several ranks: LOCAL_RANK=0 for every library, cuda:0 current, and
    the gloo process group opened now. Returns the binding, or None where the mode does not apply.
    `init` / `set_device` default to torch's (tests pass fakes)."""
    env = os.environ if env is None else env
    if not shared_device(env) or not cuda_usable():
        return None
    info = launch_info(env)
    if info.world_size < 2:
        return None
    env.setdefault(LAUNCH_LOCAL_RANK_ENV, str(info.local_rank))
    env["LOCAL_RANK"] = "0"
    env["ACCELERATE_TORCH_DEVICE"] = "cuda:0"  # accelerate's PartialState takes the device from here
    binding = bind(0, info.world_size, True, 1, True)
    if init is None or set_device is None:
        import torch
        import torch.distributed as tdist

        set_device = set_device or torch.cuda.set_device
        init = init or (lambda backend: None if tdist.is_initialized() else tdist.init_process_group(
            backend, rank=info.rank, world_size=info.world_size, timeout=timedelta(seconds=1800)))
    set_device(0)
    init(binding.backend)
    return binding


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

    return torch.device(current_binding(info).device)


def init_distributed(timeout_s: int = 1800) -> LaunchInfo:
    """Process group for plain-torch entry points (nccl on GPU, gloo on CPU); no-op for one process."""
    import torch
    import torch.distributed as dist

    info = launch_info()
    b = current_binding(info)
    if b.index is not None:
        torch.cuda.set_device(b.index)
    if info.world_size > 1 and not dist.is_initialized():
        dist.init_process_group(b.backend, timeout=timedelta(seconds=timeout_s))
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
