"""AceRAG compression bookkeeping (harness/acerag/compress.py) against upstream's arithmetic at bce608d1."""

from __future__ import annotations

import random

import pytest

from harness.acerag import compress as C
from harness.acerag.train import contiguous_shards, forked_map


def test_split_head_tail_context():
    wo = [1, 5, 6, 99, 7, 8]
    w = [1, 5, 6, 40, 41, 42, 7, 8]
    assert C.split_head_tail_context(wo, w) == ([1, 5, 6], [7, 8], [40, 41, 42])


def test_stride_indices_ratio_one_drops_bos_and_keeps_every_context_token():
    chunks = C.encoder_chunks(list(range(10, 20)), encoder_max_length=64, bos_token_id=1)
    assert chunks == [[1, *range(10, 20)]]
    assert C.encoder_indices(chunks, 1) == [list(range(1, 11))]


def test_stride_indices_add_last_position_when_not_divisible():
    chunk = [[1] + list(range(10, 17))]  # length 8
    assert C.encoder_indices(chunk, 3) == [[2, 5, 7]]
    assert C.encoder_indices(chunk, 4) == [[3, 7]]


def test_chunks_respect_encoder_max_length_with_bos_and_instruction():
    chunks = C.encoder_chunks(list(range(100, 120)), encoder_max_length=8, bos_token_id=1, task_instruction_ids=[7, 7])
    assert all(len(c) <= 8 for c in chunks) and chunks[0][:3] == [1, 7, 7]
    assert sum(len(c) - 3 for c in chunks) == 20
    # no BOS (Qwen3): the whole length holds context
    assert [len(c) for c in C.encoder_chunks(list(range(20)), 8, None)] == [8, 8, 4]


def test_random_indices_are_sorted_same_count_and_skip_instruction():
    chunks = [[1, 7, 7, *range(50, 70)]]
    rng = random.Random(0)
    idx = C.encoder_indices(chunks, 4, "random", [7, 7], rng)[0]
    assert idx == sorted(idx) and len(idx) == len(C.encoder_indices(chunks, 4, "stride", [7, 7])[0])
    assert min(idx) >= 2 and len(set(idx)) == len(idx)


def test_terminal_indices_and_unknown_method():
    chunks = [[1, *range(10, 20)]]
    assert C.encoder_indices(chunks, 5, "terminal") == [[8, 9, 10]]  # stride 4, 9 + last 10
    with pytest.raises(ValueError):
        C.encoder_indices(chunks, 2, "median")


def test_truncation_keeps_both_ends_and_the_half_zero_quirk():
    ctx = list(range(100))
    # 20 LM tokens, 10 of them non-context -> budget (20 - 10) * 2 = 20 -> first 10 + last 10
    cut = C.truncate_context(ctx, length_w_context=110, lm_max_length=20, ratio=2)
    assert cut == ctx[:10] + ctx[-10:]
    # budget 1 -> half 0 -> ids[:0] + ids[-0:] keeps everything (upstream behaviour)
    assert C.truncate_context(ctx, length_w_context=110, lm_max_length=11, ratio=1) == ctx
    assert C.truncate_context(ctx, length_w_context=110, lm_max_length=1000, ratio=1) == ctx


def test_encode_finetune_sample_labels_only_on_tail():
    head, ctx, tail = [1, 2, 3], list(range(40, 60)), [4, 5, 6, 7]
    w = head + ctx + tail
    w_labels = [-100] * (len(w) - 2) + [6, 7]
    wo = head + [999] + tail
    s = C.encode_finetune_sample(wo, [], w, w_labels, ratio=4, lm_max_length=100, encoder_max_length=64,
                                 bos_token_id=1, method="stride")
    n = len(s.ph_indices)
    assert n == 6  # 21-token chunk: 3, 7, 11, 15, 19 and the last, 20
    assert s.input_ids == head + [C.PH_TOKEN_ID] * n + tail
    assert s.labels == [-100] * (3 + n) + [-100, -100, 6, 7]
    assert not s.truncated


def test_window_plan_groups_and_sizes():
    draws = iter([2, 4, 1, 8, 2, 2])
    plan = C.window_plan(5 * 10 + 3, window=10, encoder_max_length=20, comp_candidates=[1, 2, 4, 8],
                         method="stride", choose=lambda c: next(draws), randperm=lambda n: list(range(n)))
    assert plan.segment_sizes == [10, 10, 10, 10, 10, 3]
    assert plan.ratios == [2, 4, 1, 8, 2, 2]  # one draw per window, the last unused
    assert plan.comp_sizes == [5, 2, 10, 1, 5]
    assert plan.group_sizes == [20, 20, 10]  # flushed at >= 20, last group at the final window
    assert plan.group_indices[0] == [1, 3, 5, 7, 9] + [13, 17]
    assert plan.group_indices[1] == list(range(10)) + [17]  # ratio 1 keeps every position (no BOS to drop)
    assert plan.group_indices[2] == [1, 3, 5, 7, 9]


def test_window_plan_random_positions_are_unsorted_randperm_prefixes():
    perm = [7, 2, 9, 0, 5, 1, 8, 3, 6, 4]
    plan = C.window_plan(25, window=10, encoder_max_length=100, comp_candidates=[2], method="random",
                         choose=lambda c: 2, randperm=lambda n: perm[:n])
    assert plan.group_indices == [[7, 2, 9, 0, 5, 17, 12, 19, 10, 15]]


def test_sample_loss_is_token_weighted_and_skips_nan():
    assert C.sample_loss([1.0, float("nan"), 4.0], [3, 5, 1]) == pytest.approx((3 + 4) / 4)


def test_resample_target_down_up_keep():
    assert C.resample_target(50000, [0.1, 1.0], 0, 90000) == ("down", 5000)
    assert C.resample_target(50000, [0.1, 1.0], 1, 20000) == ("up", 50000)
    assert C.resample_target(None, [], 0, 7) == ("keep", 7)
    assert C.resample_target(10, [], 0, 5) == ("keep", 5)  # no splits: never up-sampled


def test_forked_map_seeds_each_shard_by_its_rank():
    """Shard r draws from random.seed(r), as the upstream run's hook map_shard_seed seeds datasets' worker for shard r."""
    assert [len(r) for r in contiguous_shards(10, 4)] == [3, 3, 2, 2]
    assert len(contiguous_shards(3, 32)) == 3  # num_proc capped at the row count
    random.seed(5)
    before = random.getstate()
    out = forked_map(list(range(10)), lambda _: random.random(), 4)
    firsts = []
    for rank in range(4):
        random.seed(rank)
        firsts.append(random.random())
    assert [out[0], out[3], out[6], out[8]] == firsts and len(set(firsts)) == 4
    random.seed(0)
    random.random()
    assert out[1] == random.random()  # the shard's stream continues within it
    random.seed(5)
    assert forked_map([1], lambda _: 0, 4) == [0] and random.getstate() == before  # the parent's state untouched
