"""The transformer MLP as one autograd function with Fast-LLM's recompute levels (1aa6040).

Upstream (``fast_llm/functional/triton/mlp.py::mlp_forward/mlp_backward``, ``functional/config.py``) runs
layer 1, the activation and layer 2 inside one forward/backward pair and chooses what to keep:

========================  ============================================  =====================
``--mlp_recompute_level``  kept for backward (besides the weights)        recomputed in backward
========================  ============================================  =====================
``none``                   MLP input, layer-1 output, activation output  -
``activation``             MLP input, layer-1 output                     activation output
``activation_and_input``   MLP input (no sparse copy: the same tensor),  activation output
                           layer-1 output
``full``                   MLP input                                     layer-1 and activation
========================  ============================================  =====================

(``activation_and_input`` only differs from ``activation`` for mixture-of-experts sparse copies.) The
activation's own backward is computed from the layer-1 output, as upstream's Triton kernel does, so at
level ``none`` no further activation tensors are kept - that is what the 4xA100 table measured (GPU runs
use the Triton path). Recomputing must give the same numbers: matmuls over the same operands are
deterministic on one device, so the three levels train bit-identical curves.

Gated MLP: layer 1 has ``2 x ffn`` outputs, ``chunk(2)`` gives (x1, x2) and the activation is
``act(x1) * x2`` (Mistral's ``act(gate_proj(x)) * up_proj(x)``: layer 1 = cat(gate, up)).

Test hook: ``fault="stale_activation"`` makes a recomputing level use the *previous* call's activation
output for this layer instead of recomputing it - the cache bug the twin's negative control must catch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LEVELS = ("none", "activation", "activation_and_input", "full")
FAULTS = (None, "stale_activation")

_ACTIVATIONS = {
    "silu": F.silu,
    "gelu": lambda x: F.gelu(x, approximate="tanh"),  # fast_llm ActivationType.gelu is the tanh form
    "relu": F.relu,
    "squared_relu": lambda x: torch.pow(F.relu(x), 2),
}

#: layer key -> the activation output of that layer's previous forward (only with the stale fault)
_STALE: dict[object, torch.Tensor] = {}


def activation(x: torch.Tensor, gated: bool, activation_type: str) -> torch.Tensor:
    """torch_mlp_activation: ``act(x1) * x2`` for gated MLPs, else ``act(x)``."""
    fn = _ACTIVATIONS[activation_type]
    if gated:
        x1, x2 = x.chunk(2, dim=-1)
        return fn(x1) * x2
    return fn(x)


def _linear(x, weight, bias):
    return F.linear(x, weight, bias)


class MLPFunction(torch.autograd.Function):
    """Forward keeps exactly the tensors of the level's row above (``ctx.save_for_backward``, so
    saved-tensor hooks count them); backward recomputes the rest."""

    @staticmethod
    def forward(ctx, input_, weight_1, bias_1, weight_2, bias_2, gated, activation_type, recompute_level,
                layer_key, fault):  # noqa: D401
        intermediate_1 = _linear(input_, weight_1, bias_1)
        intermediate_2 = activation(intermediate_1, gated, activation_type)
        output = _linear(intermediate_2, weight_2, bias_2)
        keep_1 = recompute_level != "full"
        keep_2 = recompute_level == "none"
        stale = None
        if fault == "stale_activation" and not keep_2:
            stale = _STALE.get(layer_key, intermediate_2).detach()
            _STALE[layer_key] = intermediate_2.detach()
        ctx.save_for_backward(input_, intermediate_1 if keep_1 else None, intermediate_2 if keep_2 else None,
                              weight_1, bias_1, weight_2, bias_2)
        ctx.stale = stale
        ctx.gated, ctx.activation_type = gated, activation_type
        return output

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D401
        input_, intermediate_1, intermediate_2, weight_1, bias_1, weight_2, bias_2 = ctx.saved_tensors
        stale, ctx.stale = ctx.stale, None
        grad_intermediate_2 = grad_output.matmul(weight_2)
        if intermediate_1 is None:  # level full: recompute layer 1
            intermediate_1 = _linear(input_, weight_1, bias_1)
        with torch.enable_grad():
            x = intermediate_1.detach().requires_grad_(True)
            recomputed = activation(x, ctx.gated, ctx.activation_type)
            (grad_intermediate_1,) = torch.autograd.grad(recomputed, x, grad_intermediate_2)
        if intermediate_2 is None:  # recompute levels: the recomputed activation (or the stale one)
            intermediate_2 = recomputed.detach() if stale is None else stale
        del recomputed, x
        flat_out = grad_output.reshape(-1, grad_output.shape[-1])
        grad_weight_2 = flat_out.t().matmul(intermediate_2.reshape(-1, intermediate_2.shape[-1]))
        grad_bias_2 = flat_out.sum(0) if bias_2 is not None else None
        grad_input = grad_intermediate_1.matmul(weight_1)
        flat_1 = grad_intermediate_1.reshape(-1, grad_intermediate_1.shape[-1])
        grad_weight_1 = flat_1.t().matmul(input_.reshape(-1, input_.shape[-1]))
        grad_bias_1 = flat_1.sum(0) if bias_1 is not None else None
        return (grad_input, grad_weight_1, grad_bias_1, grad_weight_2, grad_bias_2,
                None, None, None, None, None)


def mlp(input_: torch.Tensor, weight_1: torch.Tensor, bias_1: torch.Tensor | None, weight_2: torch.Tensor,
        bias_2: torch.Tensor | None, *, gated: bool, activation_type: str, recompute_level: str = "none",
        training: bool = True, layer_key: object = None, fault: str | None = None) -> torch.Tensor:
    """mlp_autograd: the MLP output; in eval (or without grad) nothing is kept at all."""
    if recompute_level not in LEVELS:
        raise ValueError(f"unknown MLP recompute level {recompute_level!r} (one of {', '.join(LEVELS)})")
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}")
    if not training or not torch.is_grad_enabled():
        return _linear(activation(_linear(input_, weight_1, bias_1), gated, activation_type), weight_2, bias_2)
    return MLPFunction.apply(input_, weight_1, bias_1, weight_2, bias_2, gated, activation_type, recompute_level,
                             layer_key, fault)


def reset_faults() -> None:
    _STALE.clear()
