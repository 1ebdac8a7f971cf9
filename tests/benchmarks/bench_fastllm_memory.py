"""Activation memory per MLP recompute level, against Fast-LLM's 4xA100 table (prepare_training.md @1aa6040).

Counts the bytes the forward pass leaves for backward (saved-tensor hooks, one count per storage,
parameters excluded) with the twin's transformer body - which keeps what Fast-LLM's GPU path keeps (RMSNorm
output, q/k/v/output/lse of flash-attn, the MLP tensors of the level) - plus the LM head counted as Fast-LLM
keeps it (its fused cross-entropy runs the head's backward inside the forward and keeps only the input
gradient, one hidden-size row per token; no logits, no log-softmax) - at two shapes:

* the twin's (fp32, 2 layers, 2 x 64 tokens), real tensors;
* the published Mistral-7B (bf16, 32 layers, one 8192-token sample, window 4096) on the meta device.

and prints them beside the table (36,515 / 29,346 / 15,010 MiB): ratios to ``none``, the MiB each level
saves over the previous one, and the level-independent offset between the table and the count.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from harness.fast_llm import memory  # noqa: E402
from harness.fast_llm.model import GPT, GPTShape  # noqa: E402

TWIN = GPTShape(vocab_size=512, hidden_size=64, num_layers=2, num_attention_heads=8, head_groups=2,
                ffn_hidden_size=224)


def twin_shape() -> dict[str, float]:
    tokens = torch.randint(0, TWIN.vocab_size, (2, 65), generator=torch.Generator().manual_seed(0))
    out = {}
    for level in ("none", "activation", "full"):
        torch.manual_seed(0)
        out[level] = memory.measure_model(GPT(TWIN, window=32, recompute_level=level), tokens).mib
    return out


def main() -> None:
    t0 = time.perf_counter()
    twin = twin_shape()
    print("bench_fastllm_memory: twin shape (fp32, 2 layers, hidden 64, ffn 224, 2 x 64 tokens)")
    for level, mib in twin.items():
        print(f"  {level:<10} {mib * 1024:10.1f} KiB  ratio to none {mib / twin['none']:.3f}")
    meta = memory.mistral_7b_on_meta()
    print("Mistral-7B on the meta device (bf16, 32 layers, 1 x 8192 tokens, window 4096) vs the 4xA100 table:")
    print(f"  {'level':<10} {'counted':>10} {'table':>8} {'ratio':>7} {'table':>7} {'saved':>8} {'table':>8} {'offset':>8}")
    for row in memory.compare_with_table(meta):
        saved = f"{row['measured_saved_mib']:8.0f} {row['published_saved_mib']:8.0f}" if "measured_saved_mib" in row \
            else f"{'-':>8} {'-':>8}"
        print(f"  {row['level']:<10} {row['measured_mib']:10.0f} {row['published_mib']:8.0f} "
              f"{row['measured_ratio']:7.3f} {row['published_ratio']:7.3f} {saved} "
              f"{row['published_mib'] - row['measured_mib']:8.0f}")
    print("  (MiB; ratio = level / none; saved = MiB below the previous level; offset = table - counted)")
    rows = {row["level"]: row for row in memory.compare_with_table(meta)}
    offsets = [row["published_mib"] - row["measured_mib"] for row in rows.values()]
    print("  The MiB each level saves match the table: the dropped tensors are exactly the activation output")
    print("  (ffn x 2 B x 8192 tokens x 32 layers = 7,168 MiB) and the layer-1 output (2 x ffn: 14,336 MiB).")
    print(f"  The totals sit {min(offsets):,.0f}-{max(offsets):,.0f} MiB below the table at every level, so the ratios "
          f"differ ({rows['activation']['measured_ratio']:.3f} vs {rows['activation']['published_ratio']:.3f}, "
          f"{rows['full']['measured_ratio']:.3f} vs {rows['full']['published_ratio']:.3f}):")
    print("  Counted like for like (no fp32 logits kept: Fast-LLM's head never keeps them), about 5.6 GiB of the")
    print("  table is not explained by anything this count sees. Candidates, none measured here: the allocator")
    print("  peak the table reports vs tensors kept for backward (transient logits and their gradient inside the")
    print("  head's forward, 8192 x 32000 bf16 = 500 MiB each, backward working buffers, fragmentation and")
    print("  caching-allocator rounding). The per-level differences match; the totals do not, by that offset.")
    print(f"  total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
