"""Put on PYTHONPATH (with the repro root) of a real upstream run that the GPU lane starts with more ranks than
GPUs: every Python process of that run enters the suite's shared-device mode before the upstream code starts
(harness/runtime/dist.py: LOCAL_RANK=0, cuda:0, the gloo process group opened first, which accelerate and torch
then reuse). DEVIATION from upstream, declared by the reference (repro/upstream/gpu_refs.py): NCCL refuses two ranks
on one device, so the upstream's own backend choice is replaced by gloo. A no-op without REPRO_SHARED_DEVICE or
without several ranks (the launcher process itself has no RANK)."""

import os

if os.environ.get("REPRO_SHARED_DEVICE") and "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
    from harness.runtime.dist import enter_shared_device

    enter_shared_device()
