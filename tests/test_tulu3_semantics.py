"""DPO, reward-model and PPO math of open-instruct @30d11b4 (harness/open_instruct/), on hand-made tensors."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch", reason="the Tulu 3 preference/RL semantics need torch")

from harness.open_instruct import dpo, ppo, pref_data as data, rm  # noqa: E402


def test_dpo_loss_is_ln2_when_policy_equals_reference():
    lp = torch.tensor([-1.5, -0.2, -3.0])
    lr_ = torch.tensor([-2.0, -0.1, -1.0])
    losses, rc, rr = dpo.dpo_loss(lp, lr_, lp.clone(), lr_.clone(), beta=5.0, label_smoothing=0.0)
    assert torch.allclose(losses, torch.full((3,), math.log(2)))
    assert rc.abs().max() == 0 and rr.abs().max() == 0


def test_dpo_loss_value_beta_and_smoothing():
    pc, pr, rc, rr = (torch.tensor([x]) for x in (-1.0, -2.0, -1.5, -1.5))
    z = (-1.0 + 2.0) - 0.0
    for beta, ls in ((5.0, 0.0), (0.1, 0.0), (5.0, 0.2)):
        got = dpo.dpo_loss(pc, pr, rc, rr, beta, ls)[0].item()
        want = -math.log(1 / (1 + math.exp(-beta * z))) * (1 - ls) - math.log(1 / (1 + math.exp(beta * z))) * ls
        assert got == pytest.approx(want, rel=1e-6)


def test_sequence_logps_sum_vs_average_and_masking():
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 5)
    labels = torch.tensor([[-100, 2, -100, 4]])  # predicts token 2 at position 1 and token 4 at 3
    lsm = logits.log_softmax(-1)
    want_sum = lsm[0, 0, 2] + lsm[0, 2, 4]
    assert dpo.sequence_logps(logits, labels, average=False).item() == pytest.approx(want_sum.item(), rel=1e-6)
    assert dpo.sequence_logps(logits, labels, average=True).item() == pytest.approx(want_sum.item() / 2, rel=1e-6)
    assert dpo.uses_average_log_prob("dpo_norm") and not dpo.uses_average_log_prob("dpo")


class _Echo(torch.nn.Module):
    """A model whose logits depend only on the input id (position-free), to compare forwards."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(16, 16)

    def forward(self, input_ids, attention_mask):
        return type("O", (), {"logits": self.emb(input_ids)})()


def test_concatenated_and_separate_forward_agree():
    torch.manual_seed(0)
    batch = {
        "chosen_input_ids": torch.tensor([[1, 2, 3, 4]]),
        "chosen_labels": torch.tensor([[-100, -100, 3, 4]]),
        "chosen_attention_mask": torch.ones(1, 4, dtype=torch.long),
        "rejected_input_ids": torch.tensor([[1, 2, 5]]),
        "rejected_labels": torch.tensor([[-100, -100, 5]]),
        "rejected_attention_mask": torch.ones(1, 3, dtype=torch.long),
    }
    cat = dpo.concatenated_inputs(batch)
    assert cat["concatenated_labels"].tolist() == [[-100, -100, 3, 4], [-100, -100, 5, -100]]
    assert cat["concatenated_input_ids"][1].tolist() == [1, 2, 5, 0]
    m = _Echo()
    a = dpo.concatenated_forward(m, batch, True)
    b = dpo.separate_forward(m, batch, True)
    assert torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])


def test_dpo_metrics_reduced_as_upstream():
    local = torch.zeros(20)
    pc, pr = torch.tensor([-1.0, -1.0]), torch.tensor([-2.0, -0.5])
    rc, rr = torch.tensor([-1.5, -1.5]), torch.tensor([-1.5, -1.5])
    for _ in range(2):  # two micro-batches
        dpo.accumulate_metrics(local, torch.tensor(0.5), "dpo_norm", 5.0, pc, pr, rc, rr)
    out = dpo.logged_metrics(local, grad_accum=2, logging_steps=1, loss_type="dpo_norm")
    assert out["train_loss"] == pytest.approx(0.5)
    assert out["rewards/chosen"] == pytest.approx(2.5)  # 5 * mean(0.5, 0.5)
    assert out["rewards/rejected"] == pytest.approx(5 * (-0.5 + 1.0) / 2)
    assert out["rewards/accuracy"] == 1.0  # computed on micro-batch MEANS: 2.5 > 1.25
    assert out["logps/chosen"] == pytest.approx(-1.0)
    assert "rewards/margin" in out and "rewards/chosen" not in dpo.logged_metrics(local, 2, 1, "simpo")


def test_rm_reward_readout_and_loss():
    class Backbone(torch.nn.Module):
        def forward(self, input_ids, attention_mask, position_ids, **kw):
            h = input_ids.float().unsqueeze(-1) + 0 * position_ids.unsqueeze(-1)
            return type("O", (), {"hidden_states": [h]})()

    class RM(torch.nn.Module):
        base_model_prefix = "model"

        def __init__(self):
            super().__init__()
            self.model = Backbone()
            self.score = torch.nn.Identity()

    ids = torch.tensor([[5, 6, 7, 9, 9], [5, 8, 9, 9, 9]])  # pad id 9, right padded
    logits, scores, lengths = rm.get_reward(RM(), ids, pad_token_id=9, context_length=0)
    assert lengths.tolist() == [2, 1] and scores.tolist() == [7.0, 8.0]
    loss, acc = rm.preference_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert loss.item() == pytest.approx(-(math.log(1 / (1 + math.exp(-1))) + math.log(1 / (1 + math.exp(1)))) / 2)
    assert acc.item() == 0.5


def test_rm_filter_quirk_pad_choice_and_steps():
    # both limits set (the Tulu 3 command): a 5000-token chosen survives, only the prompt is checked
    assert rm.keep_row(10, 5000, 5000, max_token_length=2048, max_prompt_token_length=2048)
    assert not rm.keep_row(3000, 10, 10, max_token_length=2048, max_prompt_token_length=2048)
    assert not rm.keep_row(10, 5000, 10, max_token_length=2048, max_prompt_token_length=None)
    assert rm.keep_row(10, 10, 5000, max_token_length=2048, max_prompt_token_length=None)  # rejected never checked
    assert rm.choose_pad(["LlamaForCausalLM"], 128000) == "[PAD]"  # list != str: always [PAD]
    sizes = rm.runtime_batch(per_device=1, grad_accum=32, world_size=8)
    assert sizes["batch_size"] == 256
    assert rm.num_training_steps(None, 1, 271409, 256) == (271409, 1060)
    assert rm.score_init_std(4096) == pytest.approx(1 / math.sqrt(4097))


def test_ppo_runtime_batch_matches_recipes():
    b8 = ppo.runtime_batch(2, 32, 32, [7], 10_000_000, 1, 3)
    assert (b8.gradient_accumulation_steps, b8.world_size, b8.rollout_batch_size, b8.num_training_steps) == (
        16, 7, 224, 44642)
    with pytest.raises(ppo.DerivationError):
        ppo.runtime_batch(3, 32, 32, [7], 1000, 1, 3)


def test_ppo_truncation_penalty_and_rewards():
    eos, pad = 2, 0
    resp = torch.tensor([[5, 2, 7, 7], [5, 6, 7, 8]])
    post = ppo.truncate_response(eos, pad, resp)
    assert post.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8]]
    lengths = ppo.first_true_indices(post == pad) - 1
    assert lengths.tolist() == [1, 3]
    scores, stop = ppo.apply_non_stop_penalty(torch.tensor([10.0, 10.0]), post, lengths, eos, 0, -10.0, True)
    assert scores.tolist() == [10.0, -10.0] and stop.tolist() == [True, False]
    kl = torch.zeros(2, 4)
    rewards, non_score, rlhf = ppo.token_rewards(kl, scores, lengths, beta=0.05)
    assert rewards[0].tolist() == [0, 0, 10.0, 0] and rewards[1].tolist() == [0, 0, 0, -10.0]  # len+1, else len
    terms = ppo.kl_terms(torch.tensor([0.0, 0.1]), torch.tensor([0.0, 0.0]))
    assert terms["kl1"][0] == 0 and terms["kl3"][1].item() == pytest.approx(math.exp(-0.1) - 1 + 0.1, rel=1e-5)


def test_gae_whiten_and_losses():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.zeros(1, 3)
    adv, ret = ppo.gae(rewards, values, gamma=1.0, lam=0.95)
    assert adv.tolist()[0] == pytest.approx([0.9025, 0.95, 1.0])
    w = ppo.masked_whiten(torch.tensor([1.0, 2.0, 3.0, 100.0]), torch.tensor([True, True, True, False]))
    assert w[:3].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-4)  # Bessel-corrected var = 1
    mask = torch.zeros(1, 3, dtype=torch.bool)
    lp = torch.zeros(1, 3)
    loss, clipfrac, ratio, _ = ppo.policy_loss(lp + 0.5, lp, torch.ones(1, 3), mask, cliprange=0.2)
    assert loss.item() == pytest.approx(-1.2) and clipfrac.item() == 1.0  # ratio e^0.5 clipped to 1.2
    vf, vclip = ppo.value_loss(torch.ones(1, 3), torch.zeros(1, 3), torch.ones(1, 3), mask, 0.2)
    assert vf.item() == pytest.approx(0.5 * 0.64) and vclip.item() == 1.0


def test_shuffling_iterator_is_seeded_and_drops_the_tail():
    a = ppo.ShufflingIterator(10, 4, seed=3)
    b = ppo.ShufflingIterator(10, 4, seed=3)
    first = [next(a) for _ in range(3)]
    assert first == [next(b) for _ in range(3)]
    assert len(set(first[0] + first[1])) == 8  # two full batches, then a reshuffle (2 rows never served)


def test_generated_rows_have_upstream_formats():
    rows = data.preference_rows()
    assert len(rows) == 132 and all(r["chosen"][:-1] == r["rejected"][:-1] for r in rows)
    assert all(r["chosen"][-1]["role"] == "assistant" and r["chosen"][-1] != r["rejected"][-1] for r in rows)
    assert rows == data.preference_rows()  # deterministic
    rl = data.rlvr_rows()
    assert {r["dataset"] for r in rl} == {"gsm8k", "MATH", "ifeval"}
    assert all(len(r["messages"]) == 1 and r["messages"][0]["role"] == "user" for r in rl)
