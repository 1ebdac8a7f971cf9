"""AceRAG's compression bookkeeping as pure functions over token-id lists (LightRAG @bce608d1, AceRAG/src).

Why pure: the twin's claims about compression (which encoder states replace which placeholders, how a
long context is cut, how a pretraining text is split into windows) must be testable without a model.
Each function mirrors one upstream routine and keeps its quirks, named where they bite:

* ``split_head_tail_context``: longest common prefix/suffix of the prompt tokenized without and with the
  context (``CompressionRateAdapter.split_head_tail_context``); an empty tail slices to ``[:-0]`` = [].
* ``truncate_context``: the fine-tuning cut of ``encode_instruction_tuning_data``: budget
  ``(lm_max_length - non-context tokens) * ratio``, keep first and last ``budget // 2``; a budget of 0 or 1
  gives ``half == 0`` and ``ids[:0] + ids[-0:]`` keeps the WHOLE context (upstream behaviour, kept).
* ``encoder_chunks`` / ``encoder_indices``: BOS-prefixed chunks of at most ``encoder_max_length`` tokens
  (task instruction after BOS), positions ``r-1, 2r-1, ...`` plus the last one when ``len % r``, first
  one dropped for ``r == 1``; ``random`` draws the same count with ``random.sample`` and sorts it.
* ``window_plan``: window mode ("two-stream AR"): per-window ratios from a numpy Generator (one draw per
  window, the last one included although it is never used), encoder groups flushed once they reach
  ``encoder_max_length``, ``random`` positions from ``randperm`` unsorted.
"""

from __future__ import annotations

import math
import random as _random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: Token id written at each placeholder position before its row is overwritten (upstream PH_TOKEN_ID).
PH_TOKEN_ID = 100
INPUT_TAG = "[INPUT_RmehNsY1]"
CONTEXT_TAG = "[CONTEXT_RmehNsY1]"
DOWN_SCALING_METHODS = ("stride", "random", "terminal")
PRETRAIN_DOWN_SCALING_METHODS = ("stride", "random")


def split_head_tail_context(wo_context: Sequence[int], w_context: Sequence[int]) -> tuple[list, list, list]:
    """(head, tail, context) of the prompt with context, by common prefix/suffix with the prompt without."""
    n = len(wo_context)
    head: list[int] = []
    for j in range(n):
        if wo_context[j] != w_context[j]:
            break
        head.append(w_context[j])
    tail: list[int] = []
    for j in range(1, n + 1):
        if wo_context[-j] != w_context[-j]:
            break
        tail.append(w_context[-j])
    tail.reverse()
    context = list(w_context[len(head) : -len(tail)])  # -0 -> empty, as upstream
    return head, tail, context


def truncate_context(context: Sequence[int], length_w_context: int, lm_max_length: int, ratio: int) -> list[int]:
    """The fine-tuning truncation of encode_instruction_tuning_data (first and last halves of the budget)."""
    context = list(context)
    budget = (lm_max_length - (length_w_context - len(context))) * ratio
    if budget < len(context):
        half = budget // 2
        return context[:half] + context[-half:]
    return context


def encoder_chunks(
    context: Sequence[int],
    encoder_max_length: int,
    bos_token_id: int | None,
    eos_token_id: int | None = None,
    task_instruction_ids: Sequence[int] | None = None,
) -> list[list[int]]:
    """Encoder inputs: ``[bos] + instruction + context[i:i+step] (+ [eos])`` per chunk (get_encoder_input_ids)."""
    ti = list(task_instruction_ids or [])
    if bos_token_id and eos_token_id:
        step = encoder_max_length - 2 - len(ti)
    elif bos_token_id:
        step = encoder_max_length - 1 - len(ti)
    else:
        step = encoder_max_length - len(ti)
    if step <= 0:
        raise ValueError(f"encoder_max_length {encoder_max_length} leaves no room for context after the instruction")
    chunks = []
    for i in range(0, len(context), step):
        piece = list(context[i : i + step])
        if bos_token_id and eos_token_id:
            chunks.append([bos_token_id, *ti, *piece, eos_token_id])
        elif bos_token_id:
            chunks.append([bos_token_id, *ti, *piece])
        else:
            chunks.append([*ti, *piece])
    return chunks


def encoder_indices(
    chunks: Sequence[Sequence[int]],
    ratio: int,
    method: str = "stride",
    task_instruction_ids: Sequence[int] | None = None,
    rng: _random.Random | None = None,
) -> list[list[int]]:
    """Selected positions per chunk (get_encoder_indices); ``rng`` defaults to the global ``random`` module."""
    if method not in DOWN_SCALING_METHODS:
        raise ValueError(f"down scaling method {method!r} is not one of {', '.join(DOWN_SCALING_METHODS)}")
    n_ti = len(task_instruction_ids or [])
    rng = rng or _random  # type: ignore[assignment]
    stride = []
    for chunk in chunks:
        idx = list(range(ratio - 1 + n_ti, len(chunk), ratio))
        if len(chunk) % ratio != 0:
            idx.append(len(chunk) - 1)
        if ratio == 1:
            idx = idx[1:]
        stride.append(idx)
    if method == "stride":
        return stride
    if method == "random":
        return [sorted(rng.sample(range(n_ti, len(chunk)), len(idx))) for chunk, idx in zip(chunks, stride)]
    # terminal: the last ``count`` positions; a count of 0 slices ``[-0:]``, i.e. all of them (upstream quirk)
    return [list(range(n_ti, len(chunk)))[-len(idx) :] for chunk, idx in zip(chunks, stride)]


def placeholder_sequence(head: Sequence[int], tail: Sequence[int], indices: Sequence[Sequence[int]]):
    """(count, placeholder positions, LM input ids) = head + [PH] * count + tail (build_placeholder_sequence)."""
    count = sum(len(x) for x in indices)
    return count, [len(head) + j for j in range(count)], [*head, *([PH_TOKEN_ID] * count), *tail]


@dataclass(frozen=True)
class FinetuneSample:
    """One encoded fine-tuning row: what the collator pads and the model consumes."""

    input_ids: list[int]
    labels: list[int]
    ph_indices: list[int]
    encoder_input_ids: list[list[int]]
    encoder_indices: list[list[int]]
    ratio: int
    truncated: bool


def encode_finetune_sample(
    wo_context: Sequence[int],
    wo_labels: Sequence[int],
    w_context: Sequence[int],
    w_labels: Sequence[int],
    *,
    ratio: int,
    lm_max_length: int,
    encoder_max_length: int,
    bos_token_id: int | None,
    method: str,
    task_instruction_ids: Sequence[int] | None = None,
    rng: _random.Random | None = None,
) -> FinetuneSample:
    """encode_instruction_tuning_data for one row, after the length filter: split, cut, chunk, select."""
    del wo_labels  # upstream computes them and never uses them
    head, tail, context = split_head_tail_context(wo_context, w_context)
    cut = truncate_context(context, len(w_context), lm_max_length, ratio)
    chunks = encoder_chunks(cut, encoder_max_length, bos_token_id, task_instruction_ids=task_instruction_ids)
    idx = encoder_indices(chunks, ratio, method, task_instruction_ids, rng)
    count, ph, input_ids = placeholder_sequence(head, tail, idx)
    labels = [*w_labels[: len(head)], *([-100] * count), *w_labels[len(w_labels) - len(tail) :]]
    return FinetuneSample(input_ids, labels, ph, chunks, idx, ratio, len(cut) != len(context))


def keep_by_length(length: int, min_length: int | None, max_length: int | None) -> bool:
    """Upstream keeps a row iff ``min_length < length < max_length`` (strict on both sides)."""
    if min_length is not None and length <= min_length:
        return False
    if max_length is not None and length >= max_length:
        return False
    return True


@dataclass(frozen=True)
class WindowPlan:
    """How one pretraining text is cut (CompressiveEncoder.prepare)."""

    ratios: list[int]  # one per window, the last one drawn but unused
    segment_sizes: list[int]  # raw window lengths
    comp_sizes: list[int]  # selected states per compressed window (all but the last)
    group_sizes: list[int]  # encoder pass lengths (consecutive windows)
    group_indices: list[list[int]]  # selected positions inside each encoder pass


def window_plan(
    seq_len: int,
    window: int,
    encoder_max_length: int,
    comp_candidates: Sequence[int],
    method: str,
    choose: Callable[[Sequence[int]], int],
    randperm: Callable[[int], list[int]],
) -> WindowPlan:
    """Segment a text into windows, draw ratios, group windows into encoder passes, pick positions."""
    if method not in PRETRAIN_DOWN_SCALING_METHODS:
        raise ValueError(f"pretraining_down_scaling_method {method!r} is not one of stride, random")
    n = math.ceil(seq_len / window)
    ratios, sizes, comp = [], [], []
    for _ in range(n):
        r = int(choose(comp_candidates))
        size = min(window, seq_len - sum(sizes))
        ratios.append(r)
        sizes.append(size)
        comp.append(size // r)
    comp.pop()
    groups, group_sizes, current, current_size = [], [], [], 0
    for i in range(n):
        if current_size >= encoder_max_length or i == n - 1:
            groups.append(current.copy())
            group_sizes.append(current_size)
            current.clear()
            current_size = 0
        if i == n - 1:
            break
        if method == "stride":
            current += [current_size + ratios[i] * (j + 1) - 1 for j in range(comp[i])]
        else:
            current += [current_size + p for p in randperm(sizes[i])[: comp[i]]]
        current_size += sizes[i]
    return WindowPlan(ratios, sizes, comp, group_sizes, groups)


def sample_loss(window_losses: Sequence[float], window_tokens: Sequence[int]) -> float:
    """Token-weighted mean over windows, NaN windows skipped (CompressiveEncoder.sample_loss), as floats."""
    total, count = 0.0, 0
    for loss, n in zip(window_losses, window_tokens):
        if math.isnan(loss):
            continue
        total += loss * n
        count += n
    return total / count


def resample_target(train_num_per_data: int | None, data_splits: Sequence[float], idx: int, current: int) -> tuple[str, int]:
    """What resample_dataset does to file ``idx``: ('keep'|'down'|'up', target rows)."""
    if train_num_per_data is None:
        return "keep", current
    target = int(train_num_per_data * data_splits[idx]) if data_splits and idx < len(data_splits) else train_num_per_data
    if current > target:
        return "down", target
    if current < target and data_splits:
        return "up", target
    return "keep", current
