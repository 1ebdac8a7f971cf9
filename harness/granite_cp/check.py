"""CP-versus-one-process equivalence, run under torchrun: ``torchrun --nproc_per_node N -m harness.granite_cp.check``.

Every rank computes the one-process reference itself (same seed, whole sequence) and then its CP share; the
differences (forward outputs, input and parameter gradients summed over the CP group, the loss) are reduced
to a max over ranks and written by rank 0 as JSON. Cases, for each layout ``cpC`` / ``cpCxdpD`` given:

* ``attention``: ring attention (GQA) vs causal SDPA on the whole sequence; ``attention_local`` is the
  negative control (own chunk only) and must differ.
* ``mamba_<impl>``: a GraniteMoeHybrid Mamba2 layer with state passing vs the HF layer on the whole
  sequence; ``mamba_local`` (the HF layer on the chunk alone, no state passing) must differ.
* ``model``: the whole tiny hybrid model (Mamba + attention with RoPE, MoE + shared MLP), token-mean
  cross-entropy over shift labels with the global token count; ``model_local_attention`` (ring off, Mamba CP
  on) and ``model_local_mamba`` must differ.

It also runs on CUDA (``--device cuda``, nccl, one GPU per rank): the same code picks the CUDA kernel.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from harness.granite_cp.layout import make_layout, prepare_cp_batch
from harness.granite_cp.model import apply_context_parallel
from harness.granite_cp.ring_attention import attention as cp_attention


def tiny_config(position_embedding_type="rope", layer_types=None):
    """A plugin-compatible tiny GraniteMoeHybrid: d_state 128, head dim 64, expand 2 (see mamba_cp)."""
    from transformers import GraniteMoeHybridConfig

    layer_types = layer_types or ["linear_attention", "full_attention", "linear_attention", "full_attention"]
    return GraniteMoeHybridConfig(
        vocab_size=96, hidden_size=64, intermediate_size=32, shared_intermediate_size=48,
        num_hidden_layers=len(layer_types), layer_types=layer_types, num_attention_heads=4, num_key_value_heads=2,
        num_local_experts=4, num_experts_per_tok=2, mamba_n_heads=2, mamba_d_head=64, mamba_d_state=128,
        mamba_expand=2, mamba_n_groups=1, mamba_d_conv=4, mamba_chunk_size=4, position_embedding_type=position_embedding_type,
        max_position_embeddings=256, attention_multiplier=0.125, embedding_multiplier=2.0, residual_multiplier=0.5,
        logits_scaling=2.0, tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )


def _maxdiff(a, b) -> float:
    """Max absolute difference relative to the reference's largest magnitude (b is the reference)."""
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _reduce_max(value: float, device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _grad_diff(module_cp, module_ref, group) -> float:
    """Max |CP grads summed over the CP group - reference grads| over all parameters, relative."""
    ref = dict(module_ref.named_parameters())
    got, want = [], []
    for name, p in module_cp.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        g = g.detach().clone()
        dist.all_reduce(g, group=group)
        got.append(g.flatten())
        want.append((ref[name].grad if ref[name].grad is not None else torch.zeros_like(g)).flatten())
    return _maxdiff(torch.cat(got), torch.cat(want))


def case_attention(group, cp, cp_rank, seed, device, mode):
    g = torch.Generator().manual_seed(seed)
    b, h, hkv, L, d = 2, 4, 2, 8 * cp, 16
    q, k, v, w = (torch.randn(b, n, L, d, generator=g).to(device) for n in (h, hkv, hkv, h))
    scale = 0.3
    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    kr, vr = (t.repeat_interleave(h // hkv, dim=1) for t in ref[1:])
    out_ref = F.scaled_dot_product_attention(ref[0], kr, vr, is_causal=True, scale=scale)
    (out_ref * w).sum().backward()
    lo, hi = cp_rank * (L // cp), (cp_rank + 1) * (L // cp)
    loc = [t[:, :, lo:hi].clone().requires_grad_() for t in (q, k, v)]
    out = cp_attention(mode, *loc, group, scale)
    (out * w[:, :, lo:hi]).sum().backward()
    return {
        "out": _maxdiff(out, out_ref[:, :, lo:hi]),
        "grad_input": max(_maxdiff(a.grad, r.grad[:, :, lo:hi]) for a, r in zip(loc, ref)),
    }


def _mamba_layer(seed, device):
    from transformers.models.granitemoehybrid.modeling_granitemoehybrid import GraniteMoeHybridMambaLayer

    torch.manual_seed(seed)
    layer = GraniteMoeHybridMambaLayer(tiny_config(layer_types=["linear_attention"]), 0).to(device)
    with torch.no_grad():  # move away from the init so every parameter matters
        layer.dt_bias.uniform_(-2.0, 0.5)
        layer.D.uniform_(0.5, 1.5)
        layer.norm.weight.uniform_(0.5, 1.5)
    return layer.train()


def case_mamba(group, cp, cp_rank, seed, device, impl, recompute=False):
    ref_layer = _mamba_layer(seed, device)
    layer = copy.deepcopy(ref_layer)
    g = torch.Generator().manual_seed(seed + 1)
    b, L = 2, 8 * cp
    x = torch.randn(b, L, 64, generator=g).to(device)
    w = torch.randn(b, L, 64, generator=g).to(device)
    xr = x.clone().requires_grad_()
    out_ref = ref_layer(xr)
    (out_ref * w).sum().backward()
    lo, hi = cp_rank * (L // cp), (cp_rank + 1) * (L // cp)
    xl = x[:, lo:hi].clone().requires_grad_()
    if impl == "local":  # NEGATIVE CONTROL: the HF layer on the chunk alone, no state passing
        out = layer(xl)
    else:
        holder = torch.nn.Module()
        holder.model = torch.nn.Module()
        holder.model.layers = torch.nn.ModuleList([torch.nn.Module()])
        holder.model.layers[0].mamba = layer
        holder.config = tiny_config()
        apply_context_parallel(holder, group, attention_mode=None, mamba_impl=impl, mamba_recompute=recompute)
        out = layer(xl)
    (out * w[:, lo:hi]).sum().backward()
    return {
        "out": _maxdiff(out, out_ref[:, lo:hi]),
        "grad_input": _maxdiff(xl.grad, xr.grad[:, lo:hi]),
        "grad_params": _grad_diff(layer, ref_layer, group),
    }


def _loss(model, batch, num_items):
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), batch["shift_labels"].flatten(), ignore_index=-100,
                           reduction="sum") / num_items


def case_model(group, cp, cp_rank, seed, device, attention_mode="ring", mamba_impl="allgather"):
    from transformers import GraniteMoeHybridForCausalLM

    torch.manual_seed(seed)
    ref = GraniteMoeHybridForCausalLM(tiny_config()).to(device).train()
    ref.config._attn_implementation = "sdpa"
    model = copy.deepcopy(ref)
    g = torch.Generator().manual_seed(seed + 2)
    b, L = 2, 8 * cp
    ids = torch.randint(3, 96, (b, L), generator=g).to(device)
    labels = ids.clone()
    labels[0, : L // 3] = -100  # a prompt mask: token counts differ between chunks
    batch = {"input_ids": ids, "labels": labels}
    full = prepare_cp_batch(batch, 1, 0)
    num_items = int((full["shift_labels"] != -100).sum())
    loss_ref = _loss(ref, full, num_items)
    loss_ref.backward()
    if mamba_impl == "local":
        apply_context_parallel(model, group, attention_mode=attention_mode, mamba_impl=None)
    else:
        apply_context_parallel(model, group, attention_mode=attention_mode, mamba_impl=mamba_impl)
    shard = prepare_cp_batch(batch, cp, cp_rank, d_conv=4)
    loss = _loss(model, shard, num_items)
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total, group=group)
    return {"loss": _maxdiff(total, loss_ref), "loss_ref": float(loss_ref), "grad_params": _grad_diff(model, ref, group)}


CASES = {
    "attention": lambda *a: case_attention(*a, mode="ring"),
    "attention_local": lambda *a: case_attention(*a, mode="local"),
    "mamba_allgather": lambda *a: case_mamba(*a, impl="allgather"),
    "mamba_serial": lambda *a: case_mamba(*a, impl="serial"),
    "mamba_allgather_recompute": lambda *a: case_mamba(*a, impl="allgather", recompute=True),
    "mamba_local": lambda *a: case_mamba(*a, impl="local"),
    "model": lambda *a: case_model(*a),
    "model_local_attention": lambda *a: case_model(*a, attention_mode="local"),
    "model_local_mamba": lambda *a: case_model(*a, mamba_impl="local"),
}


def parse_layout(text: str, world: int):
    """``cp2`` or ``cp2xdp2``."""
    parts: dict[str, int] = {}
    for piece in text.split("x"):
        parts[piece.rstrip("0123456789")] = int(piece[len(piece.rstrip("0123456789")):])
    return make_layout(world, parts["cp"], parts.get("dp"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="harness.granite_cp.check")
    ap.add_argument("--layouts", default="cp2", help="comma list, e.g. cp2,cp2xdp2")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    backend = "nccl" if args.device == "cuda" else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if args.device == "cuda":
        torch.cuda.set_device(local_rank)
    device = torch.device(args.device, local_rank) if args.device == "cuda" else torch.device("cpu")
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    from torch.distributed.device_mesh import init_device_mesh

    results = {}
    try:
        for text in args.layouts.split(","):
            layout = parse_layout(text, world)
            mesh = init_device_mesh(args.device, (layout.dp, layout.cp), mesh_dim_names=("dp_shard", "cp"))
            group = mesh["cp"].get_group()
            cp_rank = mesh["cp"].get_local_rank()
            seed = 100 + layout.dp_rank(rank)  # each DP group sees different data
            for name in args.cases.split(","):
                diffs = CASES[name](group, layout.cp, cp_rank, seed, device)
                results[f"{text}/{name}"] = {k: _reduce_max(v, device) if not k.endswith("_ref") else v
                                             for k, v in diffs.items()}
        if rank == 0:
            Path(args.out).write_text(json.dumps(results, indent=1, sort_keys=True))
    finally:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
