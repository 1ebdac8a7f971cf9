"""Activation memory: the bytes a forward pass leaves for its backward pass, measured and accounted.

Measured: ``count_saved`` installs saved-tensor hooks (``torch.autograd.graph.saved_tensors_hooks``), so
every tensor any autograd node keeps is seen; each *storage* is counted once (a view keeps its whole
storage alive; two layers saving the same tensor cost it once) and parameters and buffers are left out
(they are training state, not activations). Works on the meta device, so the published Mistral-7B shape
(32 layers, micro-batch one 8192-token sample, bf16) is measured without allocating anything.

Accounted: ``mlp_saved_elements`` gives what the MLP keeps per token and layer at each recompute level
(``harness.fast_llm.mlp`` table), the closed form the measurement must agree with.

The published table (docs/tutorial/prepare_training.md @1aa6040, 4xA100) - 36,515 / 29,346 / 15,010 MiB
for none / activation / full - is compared in ``compare_with_table``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

MIB = 2 ** 20
#: prepare_training.md @1aa6040, "Recompute Level for MLPs", Act. Memory (MiB) on 4x A100.
PUBLISHED_MIB = {"none": 36515, "activation": 29346, "full": 15010}


@dataclass
class SavedTally:
    bytes_by_storage: dict[int, int] = field(default_factory=dict)
    excluded: set[int] = field(default_factory=set)
    _keep: list = field(default_factory=list)  # holds the saved tensors so storage ids stay unique
    #: bytes accounted rather than hooked: the LM head's kept input gradient (see ``measure_model``)
    head_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_storage.values()) + self.head_bytes

    @property
    def mib(self) -> float:
        return self.total_bytes / MIB


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


@contextmanager
def count_saved(module: torch.nn.Module | None = None, exclude: tuple[torch.Tensor, ...] = ()):
    """Count the unique storages autograd keeps while the block runs (parameters/buffers excluded)."""
    tally = SavedTally()
    skip = list(exclude)
    if module is not None:
        skip += list(module.parameters()) + list(module.buffers())
    tally.excluded = {_storage_key(t) for t in skip}

    def pack(tensor: torch.Tensor):
        key = _storage_key(tensor)
        if key not in tally.excluded and key not in tally.bytes_by_storage:
            tally.bytes_by_storage[key] = tensor.untyped_storage().nbytes()
            tally._keep.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield tally


def mlp_saved_elements(level: str, hidden: int, ffn: int, gated: bool = True) -> int:
    """Elements per token and layer the MLP keeps: input (hidden), layer-1 output ((1+gated) x ffn) unless
    ``full``, activation output (ffn) only at ``none``."""
    layer_1 = (2 if gated else 1) * ffn
    kept = hidden
    if level != "full":
        kept += layer_1
    if level == "none":
        kept += ffn
    return kept


def measure_model(model: torch.nn.Module, tokens: torch.Tensor) -> SavedTally:
    """Activation bytes one training forward of ``model`` on ``tokens`` (b, s+1) keeps, counted like Fast-LLM.

    The transformer body is hooked. The LM head is accounted: Fast-LLM's head (``_forward_backward``, fused
    cross-entropy) computes the loss *and* its backward inside the forward, frees logits and log-softmax
    there, and keeps only the gradient for its input (``grad_is_context``): one hidden-size row per token
    in the model dtype. The twin's trainer head (``GPT.loss``, plain ``F.cross_entropy`` on fp32 logits)
    keeps the fp32 logits instead (1,000 MiB at 8192 x 32000), which Fast-LLM never holds for backward.
    """
    with count_saved(model) as tally:
        hidden = model.body(tokens[:, :-1])
    tally.head_bytes = hidden.numel() * hidden.element_size()
    del hidden
    return tally


def mistral_7b_on_meta(levels=("none", "activation", "full"), sequence_length: int = 8192,
                       micro_batch_size: int = 1, window: int | None = 4096,
                       dtype: torch.dtype = torch.bfloat16) -> dict[str, float]:
    """MiB kept for backward by the twin's model at the published Mistral-7B shape, per recompute level."""
    from harness.fast_llm.model import GPT, GPTShape  # lazy: the training stack loads only when a run starts, not for --help or a refusal

    shape = GPTShape(vocab_size=32000, hidden_size=4096, num_layers=32, num_attention_heads=32, head_groups=8,
                     ffn_hidden_size=14336, kv_channels=128)
    out = {}
    for level in levels:
        with torch.device("meta"):
            model = GPT(shape, window=window, recompute_level=level, max_sequence_length=sequence_length).to(dtype)
            tokens = torch.zeros(micro_batch_size, sequence_length + 1, dtype=torch.long)
        out[level] = measure_model(model, tokens).mib
    return out


def compare_with_table(measured_mib: dict[str, float]) -> list[dict[str, float | str]]:
    """Rows: level, measured MiB, published MiB, measured and published ratio to ``none``, and the saving
    relative to the previous level in both (the per-level differences are what recompute controls)."""
    rows = []
    previous = None
    for level in ("none", "activation", "full"):
        if level not in measured_mib:
            continue
        row = {"level": level, "measured_mib": measured_mib[level], "published_mib": float(PUBLISHED_MIB[level]),
               "measured_ratio": measured_mib[level] / measured_mib["none"],
               "published_ratio": PUBLISHED_MIB[level] / PUBLISHED_MIB["none"]}
        if previous is not None:
            row["measured_saved_mib"] = measured_mib[previous] - measured_mib[level]
            row["published_saved_mib"] = float(PUBLISHED_MIB[previous] - PUBLISHED_MIB[level])
        rows.append(row)
        previous = level
    return rows
