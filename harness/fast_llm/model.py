"""A Mistral-shaped GPT as Fast-LLM@1aa6040 builds it, with what each layer keeps for backward.

Architecture (``--pretrained_checkpoint_type=huggingface``: ``models/gpt/conversion.py`` reads the HF
``config.json`` - ``MistralHuggingfaceConverter``; ``sliding_window`` is ignored on import, the run's
``--window_size`` applies): embeddings, ``num_layers`` x [RMSNorm -> grouped-query attention with rotary
embeddings and a sliding window -> residual -> RMSNorm -> gated MLP -> residual], final RMSNorm,
untied LM head, mean token cross-entropy.

Memory layout follows the GPU code path Fast-LLM takes (Triton kernels, flash-attn), because that is
what the 4xA100 memory table measured; each piece is an autograd function that keeps what upstream
keeps, so ``memory.count_saved`` measures the same tensors:

- RMSNorm keeps its *output* and the fp32 inverse RMS, not its input (``triton_normalization_forward``);
  backward divides the output by the weight, as upstream does.
- Rotary embeddings are applied without keeping anything but the frequency table (upstream rotates in
  place, ``triton_rotary_autograd_``).
- Attention keeps q, k, v, the output and the fp32 log-sum-exp, and recomputes the probabilities in
  backward (flash-attn; the 7/6 "hardware" FLOPs factor). Window: key j is visible from query i iff
  ``i - window < j <= i`` (flash ``window_size=(w-1, 0)``).
- The MLP is ``harness.fast_llm.mlp`` with the run's recompute level.
- The LM head is NOT counted from this model: Fast-LLM's head (``LanguageModelHead._forward_backward``
  with the fused cross-entropy) runs its own backward inside the forward and keeps only the gradient for
  its input, while this model's plain ``F.cross_entropy`` keeps the fp32 logits for backward.
  ``memory.measure_model`` therefore counts ``body`` and adds the head's one hidden-size row per token.

DEVIATION: the twin computes in float32 on CPU (``--training_dtype=bf16`` is accepted and reported, but
CPU bf16 matmuls would make the golden curve depend on the CPU's bf16 kernels); memory accounting at the
published shape uses bfloat16 on the meta device.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harness.fast_llm.mlp import mlp as mlp_function
from repro.base.errors import ReproError


@dataclass(frozen=True)
class GPTShape:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    head_groups: int
    ffn_hidden_size: int
    kv_channels: int | None = None
    gated: bool = True
    activation_type: str = "silu"
    layer_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False

    @property
    def head_size(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads


_HF_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu", "relu": "relu"}


def shape_from_hf_config(config: dict, source: str = "config.json") -> GPTShape:
    """The architecture Fast-LLM's Mistral/Llama import reads from an HF ``config.json``."""
    model_type = config.get("model_type")
    if model_type not in ("mistral", "llama"):
        raise ReproError(f"{source}: model_type {model_type!r}: the twin imports mistral or llama checkpoints")
    try:
        act = _HF_ACTIVATIONS[config.get("hidden_act", "silu")]
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        head_dim = config.get("head_dim") or hidden // heads
        if head_dim != hidden // heads:
            # upstream 1aa6040 does not import head_dim: kv_channels defaults to hidden / heads
            raise ReproError(f"{source}: head_dim {head_dim} != hidden_size / num_attention_heads; Fast-LLM "
                             "1aa6040 does not import head_dim")
        return GPTShape(vocab_size=int(config["vocab_size"]), hidden_size=hidden,
                        num_layers=int(config["num_hidden_layers"]), num_attention_heads=heads,
                        head_groups=int(config.get("num_key_value_heads") or heads),
                        ffn_hidden_size=int(config["intermediate_size"]), activation_type=act,
                        layer_norm_eps=float(config.get("rms_norm_eps", 1e-5)),
                        rope_theta=float(config.get("rope_theta", 10000.0)),
                        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)))
    except KeyError as exc:
        raise ReproError(f"{source}: missing {exc.args[0]}") from None


# --------------------------------------------------------------------------------------------
# autograd pieces that keep what upstream keeps


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_, weight, eps):  # noqa: D401
        inv = torch.rsqrt(input_.float().pow(2).mean(-1, keepdim=True) + eps)
        output = (input_.float() * inv).to(input_.dtype) * weight
        ctx.save_for_backward(output, weight, inv)
        return output

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D401
        output, weight, inv = ctx.saved_tensors
        normalized = (output / weight).float()  # upstream recovers x_hat from the output (NaN if weight is 0)
        grad = grad_output.float()
        grad_weight = (grad * normalized).reshape(-1, normalized.shape[-1]).sum(0).to(weight.dtype)
        grad_normalized = grad * weight.float()
        grad_input = inv * (grad_normalized - normalized * (grad_normalized * normalized).mean(-1, keepdim=True))
        return grad_input.to(output.dtype), grad_weight, None


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class _Rotary(torch.autograd.Function):
    """HF's rotate-half convention (Fast-LLM permutes the imported q/k weights to its own and back: same
    function). Keeps only the frequency tables."""

    @staticmethod
    def forward(ctx, x, cos, sin):  # noqa: D401
        ctx.tables = (cos, sin)  # constants of the run, not activations: not counted as saved
        return x * cos + _rotate_half(x) * sin

    @staticmethod
    def backward(ctx, grad):  # noqa: D401
        cos, sin = ctx.tables
        return grad * cos - _rotate_half(grad * sin), None, None


def window_mask(seq: int, window: int | None, device=None) -> torch.Tensor:
    """True where query i may see key j: causal, and within the window when one is set."""
    i = torch.arange(seq, device=device)[:, None]
    j = torch.arange(seq, device=device)[None, :]
    allowed = j <= i
    if window is not None:
        allowed = allowed & (j > i - window)
    return allowed


class _Attention(torch.autograd.Function):
    """Flash-attention's memory contract: keep q, k, v, output and log-sum-exp; recompute the rest."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale):  # noqa: D401  q: (b, s, H, d); k, v: (b, s, G, d)
        groups = q.shape[2] // k.shape[2]
        qh = q.transpose(1, 2)
        kh = k.transpose(1, 2).repeat_interleave(groups, dim=1)
        vh = v.transpose(1, 2).repeat_interleave(groups, dim=1)
        scores = (qh @ kh.transpose(-1, -2)).float() * scale
        scores = scores.masked_fill(~mask, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1, keepdim=True)
        probs = torch.exp(scores - lse).to(q.dtype)
        out = (probs @ vh).transpose(1, 2).contiguous()  # (b, s, H, d)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.groups, ctx.mask = scale, groups, mask  # flash-attn keeps no mask
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D401
        q, k, v, out, lse = ctx.saved_tensors
        groups, scale, mask = ctx.groups, ctx.scale, ctx.mask
        qh = q.transpose(1, 2)
        kh = k.transpose(1, 2).repeat_interleave(groups, dim=1)
        vh = v.transpose(1, 2).repeat_interleave(groups, dim=1)
        scores = (qh @ kh.transpose(-1, -2)).float() * scale
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.exp(scores - lse)
        go = grad_out.transpose(1, 2).float()
        grad_v = probs.transpose(-1, -2) @ go
        grad_probs = go @ vh.float().transpose(-1, -2)
        delta = (go * out.transpose(1, 2).float()).sum(-1, keepdim=True)
        grad_scores = probs * (grad_probs - delta) * scale
        grad_q = grad_scores @ kh.float()
        grad_k = grad_scores.transpose(-1, -2) @ qh.float()

        def fold(t):  # (b, H, s, d) -> (b, s, G, d): sum the heads of each group
            b, _, s, d = t.shape
            return t.reshape(b, -1, groups, s, d).sum(2).transpose(1, 2)

        return (grad_q.transpose(1, 2).to(q.dtype), fold(grad_k).to(k.dtype), fold(grad_v).to(v.dtype),
                None, None)


# --------------------------------------------------------------------------------------------
# modules


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        return _RMSNorm.apply(x, self.weight, self.eps)


class Block(nn.Module):
    def __init__(self, shape: GPTShape, index: int, window: int | None, recompute_level: str):
        super().__init__()
        self.shape, self.index, self.window, self.recompute_level = shape, index, window, recompute_level
        h, d = shape.hidden_size, shape.head_size
        self.norm_1 = RMSNorm(h, shape.layer_norm_eps)
        self.query = nn.Linear(h, shape.num_attention_heads * d, bias=False)
        self.key_value = nn.Linear(h, 2 * shape.head_groups * d, bias=False)
        self.dense = nn.Linear(shape.num_attention_heads * d, h, bias=False)
        self.norm_2 = RMSNorm(h, shape.layer_norm_eps)
        width = (2 if shape.gated else 1) * shape.ffn_hidden_size
        self.layer_1 = nn.Linear(h, width, bias=False)
        self.layer_2 = nn.Linear(shape.ffn_hidden_size, h, bias=False)
        self.fault: str | None = None

    def forward(self, x, cos, sin, mask):
        b, s, _ = x.shape
        d, heads, groups = self.shape.head_size, self.shape.num_attention_heads, self.shape.head_groups
        normed = self.norm_1(x)
        q = self.query(normed).view(b, s, heads, d)
        key, value = self.key_value(normed).view(b, s, 2 * groups, d).split(groups, dim=2)
        q = _Rotary.apply(q, cos, sin)
        key = _Rotary.apply(key, cos, sin)
        value = value.contiguous()  # upstream's v is its own slice; keep only it, not the whole key_value
        attn = _Attention.apply(q, key, value, mask, 1.0 / math.sqrt(d))
        x = x + self.dense(attn.view(b, s, heads * d))
        normed = self.norm_2(x)
        out = mlp_function(normed, self.layer_1.weight, None, self.layer_2.weight, None, gated=self.shape.gated,
                           activation_type=self.shape.activation_type, recompute_level=self.recompute_level,
                           training=self.training, layer_key=id(self), fault=self.fault)
        return x + out


class GPT(nn.Module):
    def __init__(self, shape: GPTShape, window: int | None = None, recompute_level: str = "none",
                 max_sequence_length: int = 2048):
        super().__init__()
        self.shape, self.window = shape, window
        self.embeddings = nn.Embedding(shape.vocab_size, shape.hidden_size)
        self.layers = nn.ModuleList(Block(shape, i, window, recompute_level) for i in range(shape.num_layers))
        self.final_norm = RMSNorm(shape.hidden_size, shape.layer_norm_eps)
        self.output = nn.Linear(shape.hidden_size, shape.vocab_size, bias=False)
        if shape.tie_word_embeddings:
            self.output.weight = self.embeddings.weight
        self.max_sequence_length = max_sequence_length

    def set_fault(self, fault: str | None) -> None:
        for layer in self.layers:
            layer.fault = fault

    def rotary(self, seq: int, device, dtype):
        d = self.shape.head_size
        inv = 1.0 / (self.shape.rope_theta ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d))
        freqs = torch.outer(torch.arange(seq, device=device, dtype=torch.float32), inv)
        emb = torch.cat((freqs, freqs), dim=-1)[None, :, None, :]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def body(self, tokens: torch.Tensor) -> torch.Tensor:
        """The hidden states entering the LM head (before the final norm) for ``tokens`` (b, s)."""
        b, s = tokens.shape
        x = self.embeddings(tokens)
        cos, sin = self.rotary(s, x.device, x.dtype)
        mask = window_mask(s, self.window, x.device)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return x

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits for ``tokens`` (b, s)."""
        return self.output(self.final_norm(self.body(tokens)))

    #: tokens between an input and its label: 1 is Fast-LLM's; 0 and 2 exist only as injected mutants
    label_shift: int = 1

    def loss(self, sample: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy over a (b, s+1) packed sample (``language model loss``)."""
        s = sample.shape[1] - 1
        logits = self(sample[:, :-1])
        shift = self.label_shift
        if shift == 1:
            labels = sample[:, 1:]
        else:  # mutant only: compare against a wrongly shifted copy (the last positions are dropped)
            n = s - max(shift - 1, 0)
            logits, labels = logits[:, :n], sample[:, shift:shift + n]
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))


# --------------------------------------------------------------------------------------------
# the Hugging Face import


def hf_to_twin_state(hf: dict[str, torch.Tensor], shape: GPTShape) -> dict[str, torch.Tensor]:
    """Mistral/Llama HF weight names -> this model's, as Fast-LLM's weight converters pair them
    (key_value = cat(k_proj, v_proj); layer_1 = cat(gate_proj, up_proj))."""
    out = {"embeddings.weight": hf["model.embed_tokens.weight"], "final_norm.weight": hf["model.norm.weight"]}
    out["output.weight"] = hf["model.embed_tokens.weight"] if shape.tie_word_embeddings else hf["lm_head.weight"]
    for i in range(shape.num_layers):
        p = f"model.layers.{i}."
        out[f"layers.{i}.norm_1.weight"] = hf[p + "input_layernorm.weight"]
        out[f"layers.{i}.query.weight"] = hf[p + "self_attn.q_proj.weight"]
        out[f"layers.{i}.key_value.weight"] = torch.cat([hf[p + "self_attn.k_proj.weight"],
                                                         hf[p + "self_attn.v_proj.weight"]])
        out[f"layers.{i}.dense.weight"] = hf[p + "self_attn.o_proj.weight"]
        out[f"layers.{i}.norm_2.weight"] = hf[p + "post_attention_layernorm.weight"]
        out[f"layers.{i}.layer_1.weight"] = torch.cat([hf[p + "mlp.gate_proj.weight"], hf[p + "mlp.up_proj.weight"]])
        out[f"layers.{i}.layer_2.weight"] = hf[p + "mlp.down_proj.weight"]
    return out


def load_pretrained(path: Path | str, *, window: int | None, recompute_level: str,
                    max_sequence_length: int) -> GPT:
    """Build the model from an HF folder (config.json + model.safetensors), as the huggingface import does."""
    folder = Path(path)
    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReproError(f"--pretrained_checkpoint_path={path}: cannot read config.json ({exc})") from None
    shape = shape_from_hf_config(config, str(config_file))
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise ReproError(f"--pretrained_checkpoint_path={path}: no *.safetensors weights")
    from safetensors.torch import load_file

    hf: dict[str, torch.Tensor] = {}
    for file in weights:
        hf.update(load_file(str(file)))
    model = GPT(shape, window=window, recompute_level=recompute_level, max_sequence_length=max_sequence_length)
    try:
        state = hf_to_twin_state(hf, shape)
    except KeyError as exc:
        raise ReproError(f"--pretrained_checkpoint_path={path}: weight {exc.args[0]} missing") from None
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model
