"""Which collectives the twins use work with their ranks sharing one device over gloo.

Run by tools/gpu-check.sh before the lane, on the GPU: `torchrun --nproc_per_node 2 harness/runtime/shared_probe.py
OUT.json` with REPRO_SHARED_DEVICE=1. Every rank binds its device through harness/runtime/dist.py (so on a GPU both
ranks use cuda:0 over gloo, exactly as the lane's twins do), runs each collective on tensors of that device and
checks the result; rank 0 writes {op: "ok" | "wrong: ..." | "error: ..."} to OUT.json. The ops are those the twin
trainers reach: DDP and accelerate (all_reduce, broadcast), FSDP2 and ZeRO (all_gather_into_tensor,
reduce_scatter_tensor), the granite CP ring (all_gather, and isend/irecv through host memory as
harness/granite_cp/comm.py sends them), metrics (all_reduce MAX). On a CPU the same script runs on CPU tensors (the
suite's test), which shows the probe itself can tell a working op from a broken one (REPRO_PROBE_BREAK=op).
Exit 0 when every op is ok, 1 otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import json  # noqa: E402
import os  # noqa: E402


def _ops(dist, torch, device, rank: int, world: int):
    """(name, thunk returning (got, want)) per collective."""

    def all_reduce():
        t = torch.full((4,), float(rank + 1), device=device)
        dist.all_reduce(t)
        return t, torch.full((4,), float(sum(range(1, world + 1))), device=device)

    def all_reduce_max():
        t = torch.tensor([float(rank)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t, torch.tensor([float(world - 1)], device=device)

    def broadcast():
        t = torch.arange(4.0, device=device) if rank == 0 else torch.zeros(4, device=device)
        dist.broadcast(t, 0)
        return t, torch.arange(4.0, device=device)

    def all_gather():
        parts = [torch.empty(2, device=device) for _ in range(world)]
        dist.all_gather(parts, torch.full((2,), float(rank), device=device))
        return torch.stack(parts), torch.arange(float(world), device=device).repeat_interleave(2).view(world, 2)

    def all_gather_into_tensor():
        out = torch.empty(2 * world, device=device)
        dist.all_gather_into_tensor(out, torch.full((2,), float(rank), device=device))
        return out, torch.arange(float(world), device=device).repeat_interleave(2)

    def reduce_scatter_tensor():
        out = torch.empty(2, device=device)
        dist.reduce_scatter_tensor(out, torch.arange(2.0 * world, device=device))
        return out, world * torch.arange(2.0 * rank, 2.0 * rank + 2, device=device)

    def isend_irecv_host_staged():
        from harness.granite_cp.comm import causal_pass  # the ring send/recv exactly as the CP twins send it

        got = causal_pass(torch.full((3,), float(rank + 1), device=device), dist.group.WORLD)
        return got, torch.full((3,), float(rank), device=device)  # rank r receives rank r-1's value; rank 0 zeros

    return [("all_reduce", all_reduce), ("all_reduce_max", all_reduce_max), ("broadcast", broadcast),
            ("all_gather", all_gather), ("all_gather_into_tensor", all_gather_into_tensor),
            ("reduce_scatter_tensor", reduce_scatter_tensor), ("isend_irecv_host_staged", isend_irecv_host_staged)]


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch.distributed as dist

    from harness.runtime.dist import current_binding, enter_shared_device, launch_info  # after sys.path is set

    out = Path((argv or sys.argv[1:])[0])
    enter_shared_device()
    info = launch_info()
    b = current_binding(info)
    if b.index is not None:
        torch.cuda.set_device(b.index)
    if not dist.is_initialized():
        dist.init_process_group(b.backend)
    device = torch.device(b.device)
    broken = os.environ.get("REPRO_PROBE_BREAK", "")
    results = {}
    for name, thunk in _ops(dist, torch, device, info.rank, info.world_size):
        try:
            got, want = thunk()
            if name == broken and info.rank == 1:
                got = got + 1  # the probe's own negative control
            ok = torch.equal(got.cpu(), want.cpu())
            flag = torch.tensor([0.0 if ok else 1.0], device=device)
            dist.all_reduce(flag)  # every rank learns whether any rank was wrong
            results[name] = ("ok" if flag.item() == 0 else
                             f"wrong: {got.cpu().tolist()} on rank {info.rank}" if not ok else "wrong on another rank")
        except Exception as exc:  # noqa: BLE001 - an unsupported op is a result, not a crash
            results[name] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    bad = [k for k, v in results.items() if v != "ok"]
    flags = torch.tensor([float(len(bad))], device=device)
    dist.all_reduce(flags)
    if info.rank == 0:
        out.write_text(json.dumps({"device": b.device, "backend": b.backend, "shared": b.shared,
                                   "world_size": info.world_size, "torch": torch.__version__, "ops": results},
                                  indent=1) + "\n", encoding="utf-8")
        print(f"shared-device probe on {b.device} over {b.backend}: "
              + ("every op ok" if not flags.item() else f"not ok: {', '.join(bad) or 'another rank'}"))
    dist.destroy_process_group()
    return 0 if flags.item() == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
