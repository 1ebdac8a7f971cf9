"""FLOPs per token, two ways, so a published tokens/s and a published TFLOP/s can be compared.

Why two formulas:

* **Fast-LLM's own** (:func:`fast_llm_flops_per_token`). Fast-LLM prints "tflop/s (model)" next
  to "tokens/s/gpu" in every log line, computed by ``GPTTrainer.get_tflops``
  (``fast_llm/models/gpt/trainer.py`` @1aa60404d9183bdc1735358a9479e33d3fbfd533). To check that a
  log's two numbers agree, or to turn the published 9000 tokens/s into the published 440 TFLOP/s,
  we must use *that* formula, quirks included: causal attention counted as s²/2 pairs, an
  ``s·w − w²/2`` window term, an LM head always counted ×3 (even for inference), MLP recompute
  never counted, and "hardware" FLOPs adding 1/6 of the attention for flash-attn's recomputed QKᵀ.
* **torchtitan's dense form** (:func:`dense_flops_per_token`) for every other recipe:
  ``6·N_active + Σ_attention-layers 6·H·(D_qk + D_v)·min(S, window)``
  (``torchtitan/models/utils.py::quadratic_attention_flops_per_token`` @01c01c88; the older
  spelling is ``12·L·H·D·S``). N_active counts matmul parameters only: the input embedding is a
  lookup and is excluded unless tied to the LM head; the LM head is included; routed experts
  count top-k/num_experts; no causal-sparsity discount; recompute not counted.

Architectures are data in ``expected/_models.yaml`` (each with its source).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from repro.base.paths import EXPECTED_DIR
from repro.base.errors import ReproError

MODELS_FILE = EXPECTED_DIR / "_models.yaml"

#: Published tokens/s and TFLOP/s are rounded and were not necessarily measured with the exact
#: formula variant we reconstruct (the 4xA100 table implies 4.79e10 FLOP/token, between the
#: windowed 4.75e10 and full-causal 4.91e10 forms): allow 3% when relating two *published* figures.
PUBLISHED_AGREEMENT_REL = 0.03
#: A log line's two numbers come out of the same process and formula; only the printed rounding
#: (2 decimals) and the window setting separate them, so 1% is generous.
LOG_LINE_AGREEMENT_REL = 0.01


class Mamba(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inner: int = Field(gt=0)
    state: int = Field(gt=0)
    heads: int = Field(gt=0)
    groups: int = Field(default=1, gt=0)


class Architecture(BaseModel):
    """One model's shapes. Names follow HF config.json (see the header of _models.yaml)."""

    model_config = ConfigDict(extra="forbid")
    display: str
    layers: int = Field(gt=0)
    hidden: int = Field(gt=0)
    heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    ffn_hidden: int = Field(ge=0)
    gated: bool = True
    vocab: int = Field(gt=0)
    tied_embeddings: bool = False
    window: int | None = Field(default=None, gt=0)
    window_layers: int | None = Field(default=None, ge=0)
    attention_layers: int | None = Field(default=None, ge=0)
    num_experts: int = Field(default=0, ge=0)
    experts_per_token: int = Field(default=0, ge=0)
    moe_ffn_hidden: int = Field(default=0, ge=0)
    shared_ffn_hidden: int = Field(default=0, ge=0)
    mamba: Mamba | None = None
    source: str = Field(min_length=1)
    verified: bool
    notes: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> "Architecture":
        if self.n_attention_layers > self.layers:
            raise ValueError("attention_layers cannot exceed layers")
        if self.n_attention_layers < self.layers and self.mamba is None:
            raise ValueError("layers without attention need a mamba mixer")
        if (self.num_experts > 0) != (self.experts_per_token > 0) or (
            self.num_experts > 0 and self.moe_ffn_hidden == 0
        ):
            raise ValueError("num_experts, experts_per_token and moe_ffn_hidden go together")
        if self.ffn_hidden == 0 and self.num_experts == 0:
            raise ValueError("a model needs a dense MLP (ffn_hidden) or experts")
        if self.window_layers is not None and self.window is None:
            raise ValueError("window_layers needs window")
        return self

    @property
    def n_attention_layers(self) -> int:
        return self.layers if self.attention_layers is None else self.attention_layers

    @property
    def n_window_layers(self) -> int:
        if self.window is None:
            return 0
        return self.n_attention_layers if self.window_layers is None else self.window_layers

    @property
    def is_dense_transformer(self) -> bool:
        return self.num_experts == 0 and self.mamba is None


class _ModelsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: dict[str, Architecture]


@lru_cache(maxsize=4)
def load_models(path: Path = MODELS_FILE) -> dict[str, Architecture]:
    """Parse and validate the architecture table; one-line ReproError naming the field."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReproError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ReproError(f"{path}: not valid YAML ({exc})") from None
    try:
        return dict(_ModelsFile.model_validate(raw).models)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ReproError(f"{path.name}: {where}: {err['msg']}") from None


def get_model(key: str) -> Architecture:
    models = load_models()
    if key not in models:
        raise ReproError(f"unknown model '{key}' (known: {', '.join(sorted(models))})")
    return models[key]


# --------------------------------------------------------------------------------------------
# Fast-LLM @1aa6040 get_tflops, per token
# --------------------------------------------------------------------------------------------


def fast_llm_flops_per_token(
    arch: Architecture,
    seq_len: int,
    window: int | None = None,
    training: bool = True,
    hardware: bool = False,
) -> float:
    """FLOPs per token exactly as Fast-LLM 1aa6040 ``GPTTrainer.get_tflops`` counts them.

    ``window`` is Fast-LLM's ``window_size`` *as configured for the run* (None = full causal
    attention), not the model's native window: Fast-LLM only applies a window when the config
    sets one, and its printed TFLOP/s follows that setting.

    Upstream works per iteration (``tokens = batch_size * sequence_length``); every term is linear
    in ``tokens``, so dividing by it gives the per-token figure used here. Defined for dense
    transformers only, as upstream is (MoE would multiply the MLP by experts_per_token; Fast-LLM
    had no Mamba then).
    """
    if not arch.is_dense_transformer:
        raise ReproError(f"Fast-LLM's 1aa6040 formula covers dense transformers only, not {arch.display}")
    ckpt_factor = 3 if training else 1  # forward + 2x backward
    transformer_base = 2 * ckpt_factor * arch.layers  # per token
    dense_base = transformer_base * arch.hidden
    flops = 2 * (arch.heads + arch.kv_heads) * arch.head_dim * dense_base  # Q, K, V, dense
    flops += (2 + int(arch.gated)) * arch.ffn_hidden * dense_base * 1  # MLP, 1 expert per token
    flops += 6 * arch.hidden * arch.vocab  # LM head: upstream always uses 6, training or not
    attn_base = transformer_base * arch.heads * arch.head_dim  # projection_size
    if window is None:
        attn = attn_base * seq_len  # s^2/2 (q,k) pairs, 2 matmuls, 2 FLOPs -> 2*attn_base*s/2*2
    else:
        attn = 2 * attn_base * window * (1 - window / 2 / seq_len)  # s*w - w^2/2 pairs
    return flops + (7 / 6 * attn if hardware else attn)


# --------------------------------------------------------------------------------------------
# torchtitan dense form
# --------------------------------------------------------------------------------------------


def active_matmul_params(arch: Architecture) -> int:
    """Parameters one token multiplies through (torchtitan's ``active_nparams``), from shapes.

    Norm weights, biases, convolution and router-softmax costs are omitted (well under 0.1%).
    """
    h = arch.hidden
    attention = h * arch.head_dim * (2 * arch.heads + 2 * arch.kv_heads)  # q, k, v, o
    mlp_mats = 3 if arch.gated else 2
    mlp = mlp_mats * h * arch.ffn_hidden
    if arch.num_experts:
        mlp += arch.experts_per_token * mlp_mats * h * arch.moe_ffn_hidden
        mlp += h * arch.num_experts  # router
    mlp += mlp_mats * h * arch.shared_ffn_hidden
    mamba = 0
    if arch.mamba is not None:
        m = arch.mamba
        mamba = h * (2 * m.inner + 2 * m.groups * m.state + m.heads) + m.inner * h  # in_proj + out_proj
    n_attn = arch.n_attention_layers
    lm_head = h * arch.vocab  # counted; the input embedding is a lookup (same tensor if tied)
    return n_attn * attention + (arch.layers - n_attn) * mamba + arch.layers * mlp + lm_head


def dense_flops_per_token(arch: Architecture, seq_len: int) -> float:
    """Training FLOPs per token, torchtitan convention: ``6·N_active`` + attention + SSM scan.

    Attention per softmax layer is ``6·H·(D_qk + D_v)·min(S, window)`` (two matmuls, forward and
    backward, no causal discount). For Mamba-2 layers the state update and readout are two
    ``state × head_dim`` contractions per head, counted like torchtitan's delta-rule term
    (``6·2·heads·state·head_dim``) [derived by analogy; torchtitan has no Mamba model].
    """
    flops = 6 * active_matmul_params(arch)
    per_layer_attn = 6 * arch.heads * (arch.head_dim + arch.head_dim)
    n_window = arch.n_window_layers
    n_full = arch.n_attention_layers - n_window
    flops += per_layer_attn * seq_len * n_full
    if n_window:
        flops += per_layer_attn * min(seq_len, arch.window) * n_window
    if arch.mamba is not None:
        m = arch.mamba
        head_dim = m.inner // m.heads
        flops += (arch.layers - arch.n_attention_layers) * 6 * 2 * m.heads * m.state * head_dim
    return float(flops)


def flops_per_token(model: str, seq_len: int, formula: str = "dense", window: int | None = None) -> float:
    """The per-token FLOPs a claim's config asks for: ``formula`` is "fast_llm" or "dense"."""
    arch = get_model(model)
    if formula == "fast_llm":
        return fast_llm_flops_per_token(arch, seq_len, window)
    if formula == "dense":
        return dense_flops_per_token(arch, seq_len)
    raise ReproError(f"unknown FLOPs formula '{formula}' (use fast_llm or dense)")


def tflops_from_tokens(tokens_per_s: float, flops_per_tok: float) -> float:
    """TFLOP/s per device implied by a tokens/s per device."""
    return tokens_per_s * flops_per_tok / 1e12


def relative_gap(value: float, reference: float) -> float:
    """Signed (value - reference) / |reference|, the unit every agreement figure is reported in."""
    return (value - reference) / abs(reference)
