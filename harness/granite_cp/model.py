"""One switch that puts a GraniteMoeHybrid model into context-parallel mode: ``apply_context_parallel``.

What it does to the model, mirroring PR #642's two halves:

* attention layers (upstream: accelerate ``parallelism_config_cp_size`` -> torch ``context_parallel``): the
  model's attention function becomes ``repro_cp_sdpa``, registered with transformers' ``AttentionInterface``
  (and the SDPA mask builder under the same name, so masks are built as for ``sdpa``). Each attention module
  carries its CP spec; the function runs causal ring attention over the CP group (mask replaced by
  ``is_causal``, as accelerate's CP hooks do) or, as the negative control, attention inside the own chunk.
* Mamba layers (upstream: ``--mcp`` -> the mcp plugin): every ``layer.mamba`` becomes ``GraniteMambaCP``,
  the same parameters with the context-parallel forward of ``harness.granite_cp.mamba_cp``. The class is swapped
  in place (no copy), before FSDP wraps the model, as the plugin's augmentation runs before ``prepare``.

The same code runs on CPU (gloo) and CUDA (nccl): the per-device choice is only the SDPA kernel inside the ring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.granite_cp.mamba_cp import MAMBA_IMPLS, MambaCPSpec, check_plugin_config, mamba_cp_forward
from harness.granite_cp.ring_attention import ATTENTION_MODES, attention, check_torch_ring_api
from repro.base.errors import ReproError

ATTN_IMPLEMENTATION = "repro_cp_sdpa"


@dataclass
class AttentionCPSpec:
    group: Any
    mode: str = "ring"


def _cp_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers attention function: CP attention where the module has a spec, plain SDPA elsewhere."""
    spec = getattr(module, "repro_cp", None)
    if spec is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if dropout:
        raise ValueError("context-parallel attention does not support attention dropout")
    out = attention(spec.mode, query, key, value, spec.group, scaling)
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> str:
    """Register ``repro_cp_sdpa`` (idempotent) and return its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, _cp_attention)
    if ATTN_IMPLEMENTATION not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    return ATTN_IMPLEMENTATION


def _mamba_cp_class(base: type) -> type:
    def forward(self, hidden_states, cache=None, attention_mask=None, **kwargs):
        # As Mamba2CPHF: cache, attention_mask and seq_idx are ignored (padding-free is not supported).
        return mamba_cp_forward(self, hidden_states, self.repro_cp)

    return type(f"{base.__name__}CP", (base,), {"forward": forward, "__doc__": "Mamba layer, context parallel."})


_CLASS_CACHE: dict[type, type] = {}


def apply_context_parallel(
    model,
    group,
    *,
    attention_mode: str | None = "ring",
    mamba_impl: str | None = "allgather",
    mamba_recompute: bool = False,
):
    """Make ``model`` context parallel over ``group``; ``None`` leaves that half (attention / Mamba) alone."""
    if attention_mode is not None and attention_mode not in ATTENTION_MODES:
        raise ValueError(f"attention_mode must be one of {ATTENTION_MODES} or None, got {attention_mode!r}")
    if mamba_impl is not None and mamba_impl not in MAMBA_IMPLS:
        raise ReproError(f"--mcp mamba_impl: {mamba_impl!r} is not reproduced (choose one of {MAMBA_IMPLS})")
    layers = model.model.layers
    has_mamba = any(getattr(layer, "mamba", None) is not None for layer in layers)
    if mamba_impl is not None and has_mamba:
        check_plugin_config(model.config)
    if attention_mode == "ring":
        check_torch_ring_api()
    for layer in layers:
        mamba = getattr(layer, "mamba", None)
        if mamba is not None and mamba_impl is not None:
            base = type(mamba)
            cls = _CLASS_CACHE.setdefault(base, _mamba_cp_class(base))
            mamba.__class__ = cls
            mamba.repro_cp = MambaCPSpec(group=group, impl=mamba_impl, recompute=mamba_recompute)
        attn = getattr(layer, "self_attn", None)
        if attn is not None and attention_mode is not None:
            attn.repro_cp = AttentionCPSpec(group=group, mode=attention_mode)
    if attention_mode is not None:
        model.config._attn_implementation = register_attention()
    return model
