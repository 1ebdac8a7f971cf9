"""Context parallelism for the Mamba2 layers of GraniteMoeHybrid: the mcp plugin's ``Mamba2CP`` semantics in torch.

The plugin (fms-acceleration plugins/mamba-cp @d4510737) swaps every ``layer.mamba`` for ``Mamba2CPHF``, a
``mamba_ssm`` ``Mamba2CP`` (garrett361/mamba@1b8f453c) that keeps the weights and ignores ``attention_mask``,
``cache`` and ``seq_idx`` (padding-free is not supported). Its forward on a rank's contiguous chunk:

1. ``in_proj`` then split into gate z, xBC, dt (same layout as the HF layer);
2. causal conv1d whose history is the previous CP rank's last ``d_conv - 1`` xBC rows (rank 0: zeros), sent
   point-to-point (``causal_passing_comms``);
3. the chunked SSD scan with state passing across ranks. ``allgather`` (the plugin default): each rank scans
   with a zero initial state, all ranks all-gather their partial final states and summed log-decays, each
   rebuilds the true initial state of its chunk from the earlier ranks and corrects its outputs. ``serial``:
   the same initial state relayed rank to rank point-to-point. Both are exact; only the communication differs.
   ``serial_naive`` (the fork's third variant) is not reproduced;
4. gated RMSNorm and ``out_proj``.

Here the scan and conv are the HF reference kernels of the model itself (``mamba2_chunk_scan``,
``causal_conv1d_fn``), so the CP path and the one-process path share every kernel and differ only by the state
passing. The plugin hard-codes ``d_state=128`` and mamba_ssm's ``headdim=64``/``expand=2``/no projection bias
(its ``get_ssmconfig_from_hfconfig``); a model with other values fails its ``load_state_dict``, and
``check_plugin_config`` refuses it the same way, in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from harness.granite_cp.comm import all_gather_stack, causal_pass
from repro.base.errors import ReproError

MAMBA_IMPLS = ("allgather", "serial")
#: Values the plugin's Mamba2CP construction fixes regardless of the HF config.
PLUGIN_FIXED = {"mamba_d_state": 128, "mamba_d_head": 64, "mamba_expand": 2, "mamba_proj_bias": False}


@dataclass
class MambaCPSpec:
    group: Any
    impl: str = "allgather"
    recompute: bool = False


def check_plugin_config(config, where: str = "--mcp") -> None:
    """One-line refusal where the plugin's Mamba2CP would not accept the HF layer's weights."""
    for key, want in PLUGIN_FIXED.items():
        got = getattr(config, key, None)
        if got != want:
            raise ReproError(
                f"{where}: the mcp plugin builds Mamba2CP with {key}={want!r} whatever the model says, and this "
                f"model has {key}={got!r} (its weights would not load)"
            )
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ReproError(f"{where}: the mcp plugin's Mamba2CP uses silu, model has hidden_act={config.hidden_act!r}")


def _initial_states_allgather(partial_final, log_decay, group):
    """h_r = sum_{j<r} exp(sum_{j<k<r} a_k) S_j from every rank's partial final state S and log-decay a.

    Written with a mask over all gathered ranks, not a loop over ``range(rank)``: every rank must build the same
    autograd graph, or the backward collectives run in different orders on different ranks and deadlock (rank 0
    would never reach the gather's backward at all).
    """
    finals = all_gather_stack(partial_final, group)  # (cp, b, h, p, n)
    decays = all_gather_stack(log_decay, group)  # (cp, b, h)
    size, rank = decays.shape[0], torch.distributed.get_rank(group)
    prefix = torch.cat([torch.zeros_like(decays[:1]), torch.cumsum(decays, dim=0)])  # P_j = sum_{k<j} a_k
    before = (torch.arange(size, device=decays.device) < rank).view(size, *([1] * (decays.dim() - 1)))
    exponent = torch.where(before, prefix[rank][None] - prefix[1:], torch.full_like(decays, float("-inf")))
    return (torch.exp(exponent)[..., None, None] * finals).sum(dim=0)


def _initial_states_serial(partial_final, log_decay, group):
    """The same h_r relayed rank to rank: cp - 1 rounds of h <- pass(exp(a) h + S)."""
    size = torch.distributed.get_world_size(group)
    state = torch.zeros_like(partial_final)
    for _ in range(size - 1):
        state = causal_pass(state * torch.exp(log_decay)[..., None, None] + partial_final, group)
    return state


def scan_cp(x, dt, A, B, C, *, chunk_size, D, dt_bias, dt_limit, group, impl: str):
    """SSD scan of this rank's chunk, exact w.r.t. the whole sequence; x (b, l, h, p), B/C (b, l, g, n)."""
    from transformers.models.granitemoehybrid.modeling_granitemoehybrid import mamba2_chunk_scan

    y0, partial_final = mamba2_chunk_scan(
        x, dt, A, B, C, chunk_size=chunk_size, D=D, z=None, dt_bias=dt_bias, dt_softplus=True,
        dt_limit=dt_limit, return_final_states=True,
    )
    # The same discretisation the scan applies: softplus(dt + bias) clamped to the time-step limit.
    dt_eff = torch.clamp(F.softplus(dt + dt_bias.to(dt.dtype)), min=dt_limit[0], max=dt_limit[1]).float()
    dA = dt_eff * A.float()[None, None, :]  # (b, l, h) log-decay per token
    log_decay = dA.sum(dim=1)  # (b, h)
    if impl == "allgather":
        initial = _initial_states_allgather(partial_final.float(), log_decay, group)
    elif impl == "serial":
        initial = _initial_states_serial(partial_final.float(), log_decay, group)
    else:
        raise ValueError(f"mamba_impl must be one of {MAMBA_IMPLS}, got {impl!r}")
    heads, groups = x.shape[2], B.shape[2]
    C_heads = C.float().repeat_interleave(heads // groups, dim=2)  # (b, l, h, n)
    decay_in = torch.exp(torch.cumsum(dA, dim=1))  # decay from the chunk start through token t
    correction = torch.einsum("blhn,bhpn->blhp", C_heads, initial) * decay_in[..., None]
    return y0 + correction.to(y0.dtype)


def conv_cp(layer, xBC: torch.Tensor, group) -> torch.Tensor:
    """Causal depthwise conv of (b, l, c) with the previous rank's last d_conv-1 rows as history."""
    from transformers.models.granitemoehybrid.modeling_granitemoehybrid import causal_conv1d_fn

    history = layer.conv_kernel_size - 1
    received = causal_pass(xBC[:, -history:], group)
    extended = torch.cat([received, xBC], dim=1).transpose(1, 2)
    out = causal_conv1d_fn(extended, layer.conv1d.weight.squeeze(1), layer.conv1d.bias, activation=layer.activation)
    return out[:, :, history:].transpose(1, 2)


def mamba_cp_forward(layer, hidden_states: torch.Tensor, spec: MambaCPSpec) -> torch.Tensor:
    """Forward of a GraniteMoeHybridMambaLayer on this rank's chunk; attention_mask/cache ignored (as upstream)."""
    batch, seq_len, _ = hidden_states.shape
    dtype = hidden_states.dtype
    projected = layer.in_proj(hidden_states)
    gate, xBC, dt = projected.split([layer.intermediate_size, layer.conv_dim, layer.num_heads], dim=-1)
    A = -torch.exp(layer.A_log.float())

    def ssm(xBC, dt, gate_unused=None):
        xBC = conv_cp(layer, xBC, spec.group)
        x, B, C = torch.split(
            xBC,
            [layer.intermediate_size, layer.n_groups * layer.ssm_state_size, layer.n_groups * layer.ssm_state_size],
            dim=-1,
        )
        return scan_cp(
            x.view(batch, seq_len, layer.num_heads, layer.head_dim),
            dt,
            A,
            B.view(batch, seq_len, layer.n_groups, layer.ssm_state_size),
            C.view(batch, seq_len, layer.n_groups, layer.ssm_state_size),
            chunk_size=layer.chunk_size,
            D=layer.D,
            dt_bias=layer.dt_bias,
            dt_limit=tuple(layer.time_step_limit),
            group=spec.group,
            impl=spec.impl,
        )

    if spec.recompute:
        # mamba_recompute: recompute the scan in the backward instead of keeping its activations.
        from torch.utils.checkpoint import checkpoint

        y = checkpoint(ssm, xBC, dt, use_reentrant=False)
    else:
        y = ssm(xBC, dt)
    y = y.reshape(batch, seq_len, -1)
    y = layer.norm(y, gate)
    return layer.out_proj(y.to(dtype))
