"""Differentiable collectives over one CP group, for gloo (CPU) and nccl (GPU) alike.

Why our own: ``torch.distributed.nn.functional.all_gather`` backs onto ``reduce_scatter``, which gloo lacks, and
torch has no autograd point-to-point op. Both functions here use only all_gather / all_reduce / isend / irecv,
which every backend has. The gradient of a gathered slot is the sum of what every rank's loss sends back to it,
which is why the backward of ``all_gather_stack`` all-reduces.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def group_rank(group) -> int:
    return dist.get_rank(group)


def group_size(group) -> int:
    return dist.get_world_size(group)


class _AllGatherStack(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, tensor, group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[dist.get_rank(ctx.group)], None


def all_gather_stack(tensor: torch.Tensor, group) -> torch.Tensor:
    """Stack every CP rank's ``tensor`` along a new dim 0 (in CP-rank order), with gradients."""
    return _AllGatherStack.apply(tensor, group)


def host_staged(device_type: str, backend: str) -> bool:
    """Point-to-point through host memory: gloo's send/recv hand the tensor's raw pointer to its TCP transport,
    which reads host memory only (its collectives stage CUDA tensors themselves; send/recv do not). Used when
    the GPU lane puts the CP ranks on one GPU over gloo (REPRO_SHARED_DEVICE)."""
    return device_type == "cuda" and backend == "gloo"


def _p2p(send: torch.Tensor | None, send_to: int | None, recv: torch.Tensor | None, recv_from: int | None, group):
    """Post a send and a receive between CP ranks (group-local indices) and wait for both.

    Plain isend/irecv rather than ``batch_isend_irecv``: gloo's batched path hangs when a rank posts nothing.
    """
    some = send if send is not None else recv
    staged = host_staged(some.device.type, str(dist.get_backend(group)))
    wire_send = send.cpu() if staged and send is not None else send
    wire_recv = torch.empty_like(recv, device="cpu") if staged and recv is not None else recv
    works = []
    if send_to is not None:
        works.append(dist.isend(wire_send, dist.get_global_rank(group, send_to), group=group))
    if recv_from is not None:
        works.append(dist.irecv(wire_recv, dist.get_global_rank(group, recv_from), group=group))
    for work in works:
        work.wait()
    if staged and recv_from is not None:
        recv.copy_(wire_recv)


class _CausalPass(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        rank, size = dist.get_rank(group), dist.get_world_size(group)
        ctx.group, ctx.rank, ctx.size = group, rank, size
        tensor = tensor.contiguous()
        received = torch.zeros_like(tensor)
        _p2p(
            tensor,
            rank + 1 if rank + 1 < size else None,
            received,
            rank - 1 if rank > 0 else None,
            group,
        )
        return received

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rank, size = ctx.rank, ctx.size
        grad = grad.contiguous()
        back = torch.zeros_like(grad)
        _p2p(grad, rank - 1 if rank > 0 else None, back, rank + 1 if rank + 1 < size else None, ctx.group)
        return back, None


def causal_pass(tensor: torch.Tensor, group) -> torch.Tensor:
    """Each CP rank receives the previous rank's ``tensor``; rank 0 receives zeros (the sequence start)."""
    return _CausalPass.apply(tensor, group)
