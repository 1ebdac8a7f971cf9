"""Causal ring attention over a CP group, load balancing off: the attention half of PR #642's context parallelism.

Upstream path: accelerate's ``ParallelismConfig(cp_size)`` -> torch ``context_parallel`` with the mcp plugin's
``_cp_options.enable_load_balance = False`` -> torch's ``_templated_ring_attention`` around the CUDA SDPA kernels
(rotate method "allgather", accelerate's default ``cp_comm_strategy``). torch hooks only the CUDA kernels, so on
CPU ``context_parallel`` silently leaves each rank attending to its own chunk (measured: loss 1577.55 vs
1424.89, no error). Here the same templated ring drives the per-device kernel explicitly: the CPU flash kernel
on CPU, the memory-efficient kernel on CUDA (it takes fp32 and bf16; the flash kernel takes only half types).

``_templated_ring_attention`` is a private torch API: ``check_torch_ring_api()`` fails loudly if it changes,
and the equivalence tests pin its behaviour against plain causal SDPA.

Block schedule without load balancing (rank r, step i, KV from rank (r - i) mod cp): i = 0 causal on the own
chunk, earlier ranks' chunks in full, later ranks' chunks skipped. ``local_causal_attention`` is the negative
control: the own chunk only, exactly what torch's CPU path does.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
import torch.nn.functional as F

from repro.base.errors import ReproError

aten = torch.ops.aten

ATTENTION_MODES = ("ring", "local")


def _ring_api():
    from torch.distributed.tensor.experimental._context_parallel import _attention as cp_attention

    return cp_attention


def check_torch_ring_api() -> None:
    """Raise a one-line error if torch's private ring-attention API is not the one this module was written for."""
    try:
        api = _ring_api()
        fwd = inspect.signature(api._templated_ring_attention).parameters
        bwd = inspect.signature(api._templated_ring_attention_backward).parameters
        opts = api._cp_options
    except (ImportError, AttributeError) as exc:
        raise ReproError(f"torch {torch.__version__}: private ring-attention API missing ({exc})") from exc
    want_fwd = ["group", "seq_dim", "op", "query", "key", "value", "is_causal"]
    want_bwd = ["group", "seq_dim", "op", "grad_out", "grad_out_name", "query", "key", "value", "out", "logsumexp"]
    if list(fwd)[: len(want_fwd)] != want_fwd or list(bwd)[: len(want_bwd)] != want_bwd:
        raise ReproError(f"torch {torch.__version__}: _templated_ring_attention signature changed: {list(fwd)}")
    if not hasattr(opts, "enable_load_balance"):
        raise ReproError(f"torch {torch.__version__}: _cp_options.enable_load_balance is gone")


@contextlib.contextmanager
def _no_load_balance():
    """The plugin's ``_cp_options.enable_load_balance = False``, scoped to our calls instead of process-wide."""
    opts = _ring_api()._cp_options
    old = opts.enable_load_balance
    opts.enable_load_balance = False
    try:
        yield
    finally:
        opts.enable_load_balance = old


#: ring exchanges run by this process (the trainer's measured cp_ring_attention: the ring ran, whatever
#: the flags say)
RING_CALLS = [0]


class _RingSDPA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, group, scale):
        api = _ring_api()
        RING_CALLS[0] += 1
        with _no_load_balance():
            if query.device.type == "cpu":
                out, lse, *rest = api._templated_ring_attention(
                    group, 2, aten._scaled_dot_product_flash_attention_for_cpu,
                    query=query, key=key, value=value, is_causal=True, dropout_p=0.0, scale=scale,
                )
            else:
                out, lse, *rest = api._templated_ring_attention(
                    group, 2, aten._scaled_dot_product_efficient_attention,
                    query=query, key=key, value=value, is_causal=True, attn_bias=None,
                    compute_log_sumexp=True, dropout_p=0.0, scale=scale,
                )
        ctx.group, ctx.scale = group, scale
        ctx.save_for_backward(query, key, value, out, lse, *[r for r in rest if isinstance(r, torch.Tensor)])
        return out

    @staticmethod
    def backward(ctx, grad_out):
        api = _ring_api()
        query, key, value, out, lse, *rest = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        with _no_load_balance():
            if query.device.type == "cpu":
                dq, dk, dv, *_ = api._templated_ring_attention_backward(
                    ctx.group, 2, aten._scaled_dot_product_flash_attention_for_cpu_backward.default,
                    grad_out=grad_out, grad_out_name="grad_out", query=query, key=key, value=value,
                    out=out, logsumexp=lse, is_causal=True, dropout_p=0.0, scale=ctx.scale,
                )
            else:
                seed, offset = rest[0], rest[1]
                dq, dk, dv, *_ = api._templated_ring_attention_backward(
                    ctx.group, 2, aten._scaled_dot_product_efficient_attention_backward.default,
                    grad_out=grad_out, grad_out_name="grad_out_", query=query, key=key, value=value,
                    attn_bias=None, out=out, logsumexp=lse, philox_seed=seed, philox_offset=offset,
                    dropout_p=0.0, grad_input_mask=(True, True, True, False), is_causal=True, scale=ctx.scale,
                )
        return dq, dk, dv, None, None


def _expand_kv(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
    """GQA: repeat KV heads to the query heads (the kernels here take equal head counts)."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    return key, value


def ring_causal_attention(query, key, value, group, scale: float | None = None) -> torch.Tensor:
    """Causal attention of this rank's query chunk over all earlier chunks; (B, H, L_local, D) in and out."""
    key, value = _expand_kv(query, key, value)
    return _RingSDPA.apply(query.contiguous(), key.contiguous(), value.contiguous(), group, scale)


def local_causal_attention(query, key, value, group=None, scale: float | None = None) -> torch.Tensor:
    """NEGATIVE CONTROL: causal attention inside the own chunk only (no ring exchange), as torch's CPU path does."""
    key, value = _expand_kv(query, key, value)
    return F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scale)


def attention(mode: str, query, key, value, group, scale: float | None = None) -> torch.Tensor:
    if mode == "ring":
        return ring_causal_attention(query, key, value, group, scale)
    if mode == "local":
        return local_causal_attention(query, key, value, group, scale)
    raise ValueError(f"attention mode must be one of {ATTENTION_MODES}, got {mode!r}")
