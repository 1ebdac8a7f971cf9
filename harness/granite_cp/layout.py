"""Context-parallel layout: which rank holds which slice of which sequence (pure functions, no torch.distributed).

Semantics reproduced (fms-hf-tuning PR #642 @80d25b93 with the fms-acceleration ``mcp`` plugin @d4510737):

* The world is a ``(dp_shard, cp)`` mesh with ``cp`` the inner dimension, so a CP group is ``cp`` consecutive
  ranks (the plugin's ``init_device_mesh(..., (rep_size, cp_degree), ("dp_shard", "cp"))`` and accelerate's
  ``ParallelismConfig`` mesh order agree on this). The PR's rule: ``cp x dp`` must equal the number of processes.
* "Load balancing is removed": the plugin sets torch's ``_cp_options.enable_load_balance = False``, so every
  sequence is cut into ``cp`` contiguous chunks and CP rank ``r`` holds chunk ``r`` (no head/tail zig-zag).
  torch's ring exchange rotates fixed-size KV buffers, so the chunks must be equal: the sequence length must be a
  multiple of ``cp``. (The ``2 x cp`` rule of torch's head-tail load balancer does not apply once it is off.)
* The Mamba conv state a rank needs is the last ``d_conv - 1`` inputs of the previous rank only, so a chunk must
  hold at least ``d_conv - 1`` tokens.
* Before sharding (transformers Trainer ``_prepare_context_parallel_inputs``, the CP path accelerate's
  ``maybe_context_parallel`` is driven by): ``shift_labels = pad(labels, (0, 1), -100)[:, 1:]`` so the label of a
  chunk's last token (the next chunk's first token) is not lost, and ``position_ids = arange(seq_len)`` so a
  chunk keeps its global positions. The loss's token count is taken over the unsharded batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from repro.base.errors import ReproError

IGNORE_INDEX = -100
#: Batch keys sharded along dim 1, in the order the transformers Trainer hands them to ``context_parallel``.
SHARDED_KEYS = ("input_ids", "labels", "shift_labels", "attention_mask", "position_ids")


@dataclass(frozen=True)
class CPLayout:
    """A ``(dp, cp)`` mesh over ``world`` ranks, cp inner: rank = dp_rank * cp + cp_rank."""

    world: int
    cp: int
    dp: int

    def cp_rank(self, rank: int) -> int:
        return rank % self.cp

    def dp_rank(self, rank: int) -> int:
        return rank // self.cp

    def cp_group(self, dp_rank: int) -> list[int]:
        return list(range(dp_rank * self.cp, (dp_rank + 1) * self.cp))

    def cp_groups(self) -> list[list[int]]:
        return [self.cp_group(d) for d in range(self.dp)]

    def dp_groups(self) -> list[list[int]]:
        return [[d * self.cp + c for d in range(self.dp)] for c in range(self.cp)]


def make_layout(world: int, cp: int, dp: int | None = None, where: str = "context parallel") -> CPLayout:
    """Validate the degrees; ``dp`` defaults to ``world // cp`` (the plugin's ``rep_size``)."""
    if not isinstance(cp, int) or cp < 1:
        raise ReproError(f"{where}: cp degree must be a positive integer, got {cp!r}")
    if dp is None:
        if world % cp:
            raise ReproError(f"{where}: world size {world} is not divisible by cp degree {cp}")
        dp = world // cp
    if not isinstance(dp, int) or dp < 1:
        raise ReproError(f"{where}: dp degree must be a positive integer, got {dp!r}")
    if cp * dp != world:
        raise ReproError(
            f"{where}: cp {cp} x dp {dp} = {cp * dp} does not equal the world size {world} "
            "(docs/training.md: context parallel degree x data parallel degree = number of GPUs)"
        )
    return CPLayout(world=world, cp=cp, dp=dp)


def check_seq_len(seq_len: int, cp: int, d_conv: int | None = None, where: str = "context parallel") -> int:
    """Return the chunk length; one-line error when the sequence cannot be cut into ``cp`` equal chunks."""
    if cp == 1:
        return seq_len
    if seq_len % cp:
        raise ReproError(
            f"{where}: sequence length {seq_len} does not divide into {cp} equal chunks (cp {cp}, load balancing "
            f"off); pad or set the max sequence length to a multiple of {cp}"
        )
    chunk = seq_len // cp
    if d_conv is not None and chunk < d_conv - 1:
        raise ReproError(
            f"{where}: chunk of {chunk} tokens (sequence {seq_len} / cp {cp}) is shorter than the Mamba conv "
            f"state ({d_conv - 1} tokens); use a longer sequence or a smaller cp degree"
        )
    return chunk


def shard_bounds(seq_len: int, cp: int, cp_rank: int) -> tuple[int, int]:
    """[start, stop) of CP rank ``cp_rank``'s contiguous chunk."""
    chunk = check_seq_len(seq_len, cp)
    return cp_rank * chunk, (cp_rank + 1) * chunk


def shift_labels(labels):
    """Next-token labels computed before sharding: ``pad(labels, (0, 1), -100)[:, 1:]``."""
    import torch.nn.functional as F

    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:].contiguous()


def prepare_cp_batch(batch: dict, cp: int, cp_rank: int, d_conv: int | None = None) -> dict:
    """The CP rank's view of a (B, L) batch: shift labels and positions first, then cut dim 1 into chunks."""
    import torch

    ids = batch["input_ids"]
    seq_len = ids.shape[1]
    check_seq_len(seq_len, cp, d_conv)
    out = dict(batch)
    if "labels" in out and "shift_labels" not in out:
        out["shift_labels"] = shift_labels(out["labels"])
    if out.get("position_ids") is None:
        out["position_ids"] = torch.arange(seq_len, device=ids.device).expand(ids.shape[0], -1)
    if cp == 1:
        return out
    start, stop = shard_bounds(seq_len, cp, cp_rank)
    for key in SHARDED_KEYS:
        value = out.get(key)
        if value is not None and getattr(value, "dim", lambda: 0)() == 2:
            out[key] = value[:, start:stop].contiguous()
    return out
