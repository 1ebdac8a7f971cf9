"""PPO semantics of open-instruct ``ppo_vllm_thread_ray_gtrl.py`` @30d11b4 (the Tulu 3 RLVR script).

Every function is one rule of that script's rollout/update, as pure tensor code:

* derived batch quantities (``calculate_runtime_args``): GA = local_mini / per_device (exact), world =
  sum(actor_num_gpus_per_node), rollout = local_rollout x world, num_training_steps =
  total_episodes // (rollout x samples_per_prompt);
* response post-processing: truncate after the first stop token (fill with pad), sequence length = first
  pad - 1, ``non_stop_penalty`` replaces the score by ``penalty_reward_value`` when no stop token (or the
  response is shorter than ``min_response_length``);
* logprobs / ref logprobs masked with INVALID_LOGPROB (1.0) past the sequence, values zeroed past length+1;
* KL estimators kl1 = lp - ref, kl2 = kl1^2/2, kl3 = exp(-kl1) - 1 + kl1; per-token reward -beta*kl,
  the score added at index length+1 (or length at the very end);
* GAE(gamma, lam) backwards over the response, returns = adv + values, advantages whitened over the
  LOCAL (per-rank) batch with Bessel's correction;
* clipped policy loss (token masked mean) and clipped value loss 0.5 x masked mean of the max.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: Upstream's fill value for log-probs past the sequence end (so exp(diff) stays 1 there).
INVALID_LOGPROB = 1.0
#: vLLM responses are padded with token 0, not the pad id (the pad id may lie outside the vocab).
DUMMY_PAD_TOKEN = 0
KL_ESTIMATORS = ("kl1", "kl2", "kl3")


class DerivationError(ValueError):
    """A batch setting the script would refuse (e.g. local_mini not a multiple of per_device)."""


@dataclass(frozen=True)
class RuntimeBatch:
    gradient_accumulation_steps: int
    world_size: int
    micro_batch_size: int
    rollout_batch_size: int
    mini_batch_size: int
    num_training_steps: int
    eval_freq: int
    local_dataloader_batch_size: int


def exact_div(a: int, b: int, what: str) -> int:
    if b == 0 or a % b:
        raise DerivationError(f"{what}: {a} is not a multiple of {b}")
    return a // b


def runtime_batch(
    per_device_train_batch_size: int,
    local_mini_batch_size: int,
    local_rollout_batch_size: int,
    actor_num_gpus_per_node: list[int],
    total_episodes: int,
    number_samples_per_prompt: int,
    num_evals: int,
) -> RuntimeBatch:
    ga = exact_div(local_mini_batch_size, per_device_train_batch_size,
                   "`local_mini_batch_size` must be a multiple of `per_device_train_batch_size`")
    world = sum(actor_num_gpus_per_node)
    rollout = local_rollout_batch_size * world
    steps = total_episodes // (rollout * number_samples_per_prompt)
    return RuntimeBatch(
        gradient_accumulation_steps=ga,
        world_size=world,
        micro_batch_size=per_device_train_batch_size * world,
        rollout_batch_size=rollout,
        mini_batch_size=local_mini_batch_size * world,
        num_training_steps=steps,
        eval_freq=max(1, steps // num_evals),
        local_dataloader_batch_size=rollout,
    )


def first_true_indices(bools: torch.Tensor) -> torch.Tensor:
    n = bools.size(-1)
    positions = torch.arange(n, device=bools.device).expand_as(bools)
    return torch.where(bools, positions, torch.full_like(positions, n)).min(dim=-1).values


def truncate_response(stop_token_id: int, pad_token_id: int, responses: torch.Tensor) -> torch.Tensor:
    """Everything after the first stop token becomes pad (the stop token itself is kept)."""
    cut = first_true_indices(responses == stop_token_id).unsqueeze(-1)
    idx = torch.arange(responses.shape[1], device=responses.device).unsqueeze(0)
    return torch.masked_fill(responses, idx > cut, pad_token_id)


def pad_generations(responses: list[list[int]], response_length: int) -> torch.Tensor:
    """vLLM token lists -> a (n, response_length) tensor padded with DUMMY_PAD_TOKEN."""
    if any(len(r) > response_length for r in responses):
        raise ValueError(f"a generation is longer than response_length {response_length}")
    return torch.tensor([list(r) + [DUMMY_PAD_TOKEN] * (response_length - len(r)) for r in responses],
                        dtype=torch.long)


def apply_non_stop_penalty(scores, postprocessed, sequence_lengths, stop_token_id, min_response_length,
                           penalty_reward_value, enabled: bool):
    """(scores, contain_stop_token): the fixed penalty for responses without a stop token."""
    contain = torch.any(postprocessed == stop_token_id, dim=-1) & (sequence_lengths >= min_response_length)
    if enabled:
        scores = torch.where(contain, scores, torch.full_like(scores, penalty_reward_value))
    return scores, contain


def padding_masks(sequence_lengths: torch.Tensor, response_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(padding_mask, padding_mask_p1): positions after length, and after length + 1."""
    idx = torch.arange(response_width, device=sequence_lengths.device).repeat(sequence_lengths.shape[0], 1)
    return idx > sequence_lengths.unsqueeze(1), idx > (sequence_lengths + 1).unsqueeze(1)


def kl_terms(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> dict[str, torch.Tensor]:
    kl1 = logprobs - ref_logprobs
    return {"kl1": kl1, "kl2": kl1**2 / 2, "kl3": (-kl1).exp() - 1 + kl1}


def token_rewards(kl: torch.Tensor, scores: torch.Tensor, sequence_lengths: torch.Tensor, beta: float):
    """(rewards, non_score_reward, rlhf_reward): -beta*kl per token, score added at length+1 (or length)."""
    non_score = -beta * kl
    rewards = non_score.clone()
    lengths_p1 = sequence_lengths + 1
    end = torch.where(lengths_p1 < rewards.size(1), lengths_p1, sequence_lengths)
    rows = torch.arange(rewards.size(0), device=rewards.device)
    rewards[[rows, end]] += scores
    return rewards, non_score, scores + non_score.sum(1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, axis=None) -> torch.Tensor:
    if axis is not None:
        return (values * mask).sum(axis=axis) / mask.sum(axis=axis)
    return (values * mask).sum() / mask.sum()


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    centred = values - masked_mean(values, mask)
    var = masked_mean(centred**2, mask)
    if unbiased:
        n = mask.sum()
        if n == 0:
            raise ValueError("the mask is empty: cannot whiten (increase mini_batch_size)")
        var = var * n / (n - 1)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    out = (values - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) by the backward recursion upstream runs (no whitening here)."""
    last = 0
    reversed_adv = []
    width = rewards.shape[1]
    for t in reversed(range(width)):
        next_values = values[:, t + 1] if t < width - 1 else 0.0
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last = delta + gamma * lam * last
        reversed_adv.append(last)
    advantages = torch.stack(reversed_adv[::-1], dim=1)
    return advantages, advantages + values


def policy_loss(new_logprobs, old_logprobs, advantages, padding_mask, cliprange: float):
    """(pg_loss, pg_clipfrac, ratio, logprobs_diff) of the clipped surrogate, token masked mean."""
    diff = new_logprobs - old_logprobs
    ratio = torch.exp(diff)
    losses1 = -advantages * ratio
    losses2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(losses1, losses2), ~padding_mask)
    clipfrac = masked_mean((losses2 > losses1).float(), ~padding_mask)
    return loss, clipfrac, ratio, diff


def value_loss(vpred, old_values, returns, padding_mask_p1, cliprange_value: float):
    """(vf_loss, vf_clipfrac): 0.5 x masked mean of max(unclipped, clipped) squared error."""
    vpred = torch.masked_fill(vpred, padding_mask_p1, 0)
    clipped = torch.clamp(vpred, old_values - cliprange_value, old_values + cliprange_value)
    l1, l2 = torch.square(vpred - returns), torch.square(clipped - returns)
    return 0.5 * masked_mean(torch.max(l1, l2), ~padding_mask_p1), masked_mean((l2 > l1).float(), ~padding_mask_p1)


class ShufflingIterator:
    """Index batches of a fixed size from a numpy-seeded permutation, reshuffled when exhausted; the
    tail that does not fill a batch is never served (upstream's effective size)."""

    def __init__(self, n: int, batch_size: int, seed: int | None):
        self.data = np.arange(n)
        self.batch_size = batch_size
        self.index = 0
        self.rng = np.random.default_rng(seed)
        self.rng.shuffle(self.data)
        self.effective = n - n % batch_size

    def __iter__(self):
        return self

    def __next__(self) -> list[int]:
        if self.index >= self.effective:
            self.index = 0
            self.rng.shuffle(self.data)
        batch = self.data[self.index : self.index + self.batch_size].tolist()
        self.index += self.batch_size
        return batch


def remove_padding(sequences: list[list[int]], pad_token_id: int) -> list[list[int]]:
    return [[t for t in seq if t != pad_token_id] for seq in sequences]
