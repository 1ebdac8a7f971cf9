"""Reward-model semantics of open-instruct ``reward_modeling.py`` / ``model_utils.get_reward`` @30d11b4.

* the score of a sequence is the ``score`` head's output at its last non-pad token; padding is found by
  comparing ids with the pad id (right padding), position ids are an exclusive cumsum of the mask, and
  pad ids are replaced by 0 before the backbone sees them.
* loss ``-logsigmoid(r_chosen - r_rejected).mean()`` over a micro-batch, accuracy ``(r_c > r_r).mean()``.
* ``layer_init(model.score, std=1/sqrt(hidden + 1))`` and every Dropout's ``p`` set to 0. Under the
  published launch (DeepSpeed ZeRO-3, ``zero3_init_flag``) the score weight the script sees is a
  (0,)-shaped partition placeholder, so that draw lands nowhere and the head keeps the init
  ``from_pretrained`` gave the missing key (``N(0, initializer_range)``, drawn on rank 0).
* the data order: accelerate 0.31 hands a shuffling sampler without a generator a fresh
  ``torch.Generator()`` (its fixed default seed) and synchronises its state from rank 0, so ``--seed`` does
  not choose the order when there are several processes (accelerate >= 1.0 seeds it from the global RNG).
* clipping at 1.0: the accelerate DeepSpeed plugin built from ``deepspeed_zero3.yaml`` leaves
  ``gradient_clipping`` "auto" and accelerate 0.31 fills it with 1.0; the script clips nothing itself.
* ``num_training_steps = total_episodes // batch_size`` where ``batch_size = per_device x GA x world``;
  the scheduler is not passed to accelerate and is stepped once per GA micro-steps.
* ``PreferenceDatasetProcessor.filter``: when ``max_prompt_token_length`` is set, *only* the prompt
  length is checked (chosen/rejected longer than ``max_token_length`` survive) - the Tulu 3 command sets both.
* pad token: the script adds ``[PAD]`` unless ``config.architectures == "LlamaForCausalLM"`` and
  bos 128000; ``architectures`` is a list in every HF config, so the comparison is always False and
  ``[PAD]`` is always added (the comment says "we do not resize", but ``--resize_token_embeddings``
  defaults to True and resizes to a multiple of 8).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PAD_TOKEN = "[PAD]"
LLAMA3_RESERVED_PAD_ID = 128002


def first_true_indices(bools: torch.Tensor) -> torch.Tensor:
    """Index of the first True per row, or the row length when there is none."""
    n = bools.size(-1)
    positions = torch.arange(n, device=bools.device).expand_as(bools)
    return torch.where(bools, positions, torch.full_like(positions, n)).min(dim=-1).values


def padded_inputs(query_responses: torch.Tensor, pad_token_id: int) -> dict[str, torch.Tensor]:
    """The backbone inputs upstream builds from right-padded ids."""
    mask = query_responses != pad_token_id
    return {
        "input_ids": torch.masked_fill(query_responses, ~mask, 0),
        "attention_mask": mask,
        "position_ids": mask.cumsum(1) - mask.long(),
    }


def get_reward(model, query_responses: torch.Tensor, pad_token_id: int, context_length: int):
    """(per-token score logits, score at the last non-pad token, sequence lengths)."""
    backbone = getattr(model, model.base_model_prefix)
    out = backbone(**padded_inputs(query_responses, pad_token_id), return_dict=True,
                   output_hidden_states=True, use_cache=False)
    logits = model.score(out.hidden_states[-1])
    if logits.shape[-1] != 1:
        raise ValueError("the reward model must output one scalar per token (num_labels=1)")
    lengths = first_true_indices(query_responses[:, context_length:] == pad_token_id) - 1 + context_length
    rows = torch.arange(logits.size(0), device=logits.device)
    return logits, logits[rows, lengths].squeeze(-1), lengths


def preference_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bradley-Terry loss and accuracy of one micro-batch."""
    return -F.logsigmoid(chosen - rejected).mean(), (chosen > rejected).float().mean()


def score_init_std(hidden_size: int) -> float:
    return 1 / math.sqrt(hidden_size + 1)


#: ZeRO stage of the published launch (configs/ds_configs/deepspeed_zero3.yaml, zero3_init_flag true).
#: reward_modeling.py @30d11b4 runs only under DeepSpeed (under plain DDP ``get_reward`` fails: the
#: wrapper has no ``base_model_prefix``), so a CPU twin, which cannot start DeepSpeed, reproduces it.
PUBLISHED_ZERO_STAGE = 3
#: the ``gradient_clipping`` accelerate 0.31 gives the engine when the accelerate yaml sets none ("auto"
#: filled with 1.0); the engine clips the accumulated gradient's global norm at this value.
DEEPSPEED_PLUGIN_CLIP = 1.0
#: torch.Generator()'s seed when nobody seeds it (what accelerate 0.31 gives the sampler).
TORCH_DEFAULT_GENERATOR_SEED = 67280421310721


def layer_init_lands(zero_stage: int | None) -> bool:
    """Whether upstream's ``layer_init(model.score)`` changes the head: not under ZeRO-3, where the weight
    outside ``GatheredParameters`` is a (0,)-shaped placeholder and ``normal_`` on it writes nothing."""
    return zero_stage != 3


def layer_init(layer, std: float, zero_stage: int | None) -> bool:
    """``layer_init`` as it acts under ``zero_stage``; returns whether it drew anything."""
    if not layer_init_lands(zero_stage):
        return False
    torch.nn.init.normal_(layer.weight, std=std)
    return True


def sampler_generator(num_processes: int) -> torch.Generator | None:
    """The generator the shuffling sampler ends up with under accelerate 0.31: with several processes a
    fresh ``torch.Generator()`` (fixed default seed; rank 0's state is synchronised to the others each
    epoch), with one process none (the sampler then seeds itself from the global RNG at every epoch).
    Given to the DataLoader up front, so accelerate >= 1.0 keeps it instead of seeding one from --seed."""
    return torch.Generator() if num_processes > 1 else None


def disable_dropout(model) -> int:
    """Set every Dropout's p to 0; returns how many modules were touched."""
    n = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0
            n += 1
    return n


def choose_pad(architectures, bos_token_id) -> str | int:
    """Upstream's pad choice, with its always-False list-vs-string comparison kept on purpose."""
    if architectures == "LlamaForCausalLM" and bos_token_id == 128000:
        return LLAMA3_RESERVED_PAD_ID
    return PAD_TOKEN


def keep_row(prompt_len: int, chosen_len: int, rejected_len: int,
             max_token_length: int | None, max_prompt_token_length: int | None) -> bool:
    """``PreferenceDatasetProcessor.filter``'s nested conditional, evaluated the way Python reads it."""
    if max_prompt_token_length is not None:
        return prompt_len <= max_prompt_token_length
    if max_token_length is not None:
        return chosen_len <= max_token_length
    return True


def runtime_batch(per_device: int, grad_accum: int, world_size: int) -> dict[str, int]:
    """``calculate_runtime_args_and_accelerator``'s derived sizes."""
    return {
        "world_size": world_size,
        "local_batch_size": per_device * grad_accum,
        "micro_batch_size": per_device * world_size,
        "batch_size": per_device * grad_accum * world_size,
    }


def num_training_steps(total_episodes: int | None, epochs: int, train_rows: int, batch_size: int) -> tuple[int, int]:
    """(total_episodes, num_training_steps): episodes default to epochs x rows, steps floor-divide."""
    episodes = epochs * train_rows if total_episodes is None else total_episodes
    return episodes, episodes // batch_size


def collate_right(batch: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """``SimplePreferenceCollator``: chosen and rejected right-padded to ONE common length."""
    length = max(max(len(r["input_ids_chosen"]), len(r["input_ids_rejected"])) for r in batch)
    if length <= 0:
        raise ValueError("the dataset is empty")
    out = {}
    for key in ("input_ids_chosen", "input_ids_rejected"):
        out[key] = torch.tensor([list(r[key]) + [pad_token_id] * (length - len(r[key])) for r in batch])
    return out


class RewardForward(torch.nn.Module):
    """``get_reward`` as a module's forward, so a DDP wrapper sees it.

    DEVIATION (structure only): upstream calls ``get_reward`` on the DeepSpeed engine, which forwards
    attribute access to the inner model and reduces gradients through parameter hooks; torch DDP only
    synchronises what runs through its own forward, so the twin wraps the same computation in a module.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, query_responses, pad_token_id: int, context_length: int):
        return get_reward(self.model, query_responses, pad_token_id, context_length)
