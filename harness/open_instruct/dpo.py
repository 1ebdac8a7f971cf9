"""DPO semantics of open-instruct ``dpo_utils.py`` / ``dpo_tune.py`` / ``dpo_tune_cache.py`` @30d11b4.

What the Tulu 3 commands rely on, and what each function here reproduces:

* ``--dpo_loss_type dpo_norm`` is the standard DPO loss on *per-token-averaged* log-probs
  (``average_log_prob`` is True for ``dpo_norm`` and ``simpo``); ``dpo`` uses summed log-probs.
* the loss per pair is ``-logsigmoid(b*z)*(1-ls) - logsigmoid(-b*z)*ls`` with
  ``z = (pi_c - pi_r) - (ref_c - ref_r)``, and the micro-batch loss is ``losses.mean()``.
* ``concatenated_forward`` pads chosen and rejected to one length (labels with -100, ids and masks with
  0), runs one forward over ``[chosen; rejected]`` and splits the log-probs; ``separate_forward`` runs
  two forwards (what ``--concatenated_forward False`` selects in dpo_tune_cache.py).
* logged metrics are summed per micro-batch into a 20-slot vector, reduced with a *mean* over ranks
  and divided by ``GA * logging_steps``; the reward metrics are computed from micro-batch *means*, so
  ``rewards/accuracy`` is ``(mean chosen reward > mean rejected reward)`` per micro-batch, as upstream.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

#: Loss types whose log-probs are averaged over the response tokens (upstream's list).
AVERAGE_LOG_PROB_LOSS_TYPES = ("simpo", "dpo_norm")
#: Loss types that need reference log-probs (live model in dpo_tune.py, cache in dpo_tune_cache.py).
REFERENCE_LOSS_TYPES = ("dpo", "dpo_norm")
LOSS_TYPES = ("dpo", "dpo_norm", "simpo", "wpo")
IGNORE_INDEX = -100
#: Slots of upstream's ``local_metrics`` vector that the trainer fills (the rest stay 0).
METRIC_SLOTS = {
    "train_loss": 0,
    "rewards/chosen": 1,
    "rewards/rejected": 2,
    "rewards/average": 3,
    "rewards/accuracy": 4,
    "rewards/margin": 5,
    "logps/chosen": 6,
    "logps/rejected": 7,
    "aux_loss": 19,
}


def uses_average_log_prob(loss_type: str) -> bool:
    return loss_type in AVERAGE_LOG_PROB_LOSS_TYPES


def needs_reference(loss_type: str) -> bool:
    return loss_type in REFERENCE_LOSS_TYPES


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, average: bool) -> torch.Tensor:
    """Log-prob of each row's labelled tokens (shifted by one), summed or averaged over those tokens."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    targets = labels[:, 1:].clone()
    mask = targets != IGNORE_INDEX
    targets[~mask] = 0
    token_logps = logits[:, :-1, :].log_softmax(-1).gather(2, targets.unsqueeze(2)).squeeze(2)
    summed = (token_logps * mask).sum(-1)
    return summed / mask.sum(-1) if average else summed


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO losses and the implicit rewards ``beta * (policy - reference)`` (detached)."""
    z = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    losses = -F.logsigmoid(beta * z) * (1 - label_smoothing) - F.logsigmoid(-beta * z) * label_smoothing
    return (
        losses,
        beta * (policy_chosen - ref_chosen).detach(),
        beta * (policy_rejected - ref_rejected).detach(),
    )


def simpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    beta: float,
    gamma_beta_ratio: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO: reference-free, a margin ``gamma_beta_ratio`` subtracted from the log-ratio."""
    z = policy_chosen - policy_rejected - gamma_beta_ratio
    losses = -F.logsigmoid(beta * z) * (1 - label_smoothing) - F.logsigmoid(-beta * z) * label_smoothing
    return losses, beta * policy_chosen.detach(), beta * policy_rejected.detach()


def wpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """WPO as upstream writes it: DPO weighted by clamp(exp(avg_c + avg_r), max=1).

    Upstream averages the (already per-sequence) log-probs with the *token* masks, which only broadcasts
    for matching shapes; the twin keeps the formula and lets torch raise where upstream would."""
    avg_c = (policy_chosen * chosen_mask).sum(-1) / chosen_mask.sum(-1)
    avg_r = (policy_rejected * rejected_mask).sum(-1) / rejected_mask.sum(-1)
    weights = torch.clamp(torch.exp(avg_c + avg_r), max=1)
    z = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    losses = (
        -F.logsigmoid(beta * z) * (1 - label_smoothing) * weights
        - F.logsigmoid(-beta * z) * label_smoothing * weights
    )
    return losses, beta * (policy_chosen - ref_chosen).detach(), beta * (policy_rejected - ref_rejected).detach()


def pad_right(t: torch.Tensor, length: int, value: int) -> torch.Tensor:
    """Pad the last dimension to ``length`` with ``value`` (no-op when already that long)."""
    if t.size(-1) >= length:
        return t
    return F.pad(t, (0, length - t.size(-1)), value=value)


def concatenated_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``chosen_*`` and ``rejected_*`` tensors stacked along the batch after padding to one length."""
    length = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
    out: dict[str, torch.Tensor] = {}
    for side in ("chosen", "rejected"):
        for key, value in batch.items():
            if not (key.startswith(side + "_") and isinstance(value, torch.Tensor)):
                continue
            name = "concatenated_" + key[len(side) + 1 :]
            padded = pad_right(value, length, IGNORE_INDEX if "labels" in key else 0)
            out[name] = padded if name not in out else torch.cat((out[name], padded), dim=0)
    return out


def concatenated_forward(model, batch: Mapping[str, torch.Tensor], average_log_prob: bool):
    """One forward over chosen+rejected; returns (chosen_logps, rejected_logps, None)."""
    cat = concatenated_inputs(batch)
    logits = model(
        input_ids=cat["concatenated_input_ids"], attention_mask=cat["concatenated_attention_mask"]
    ).logits.to(torch.float32)
    logps = sequence_logps(logits, cat["concatenated_labels"], average_log_prob)
    n = batch["chosen_input_ids"].shape[0]
    return logps[:n], logps[n:], None


def separate_forward(model, batch: Mapping[str, torch.Tensor], average_log_prob: bool):
    """Two forwards, chosen then rejected (``--concatenated_forward False``); same log-probs."""
    result = []
    for side in ("chosen", "rejected"):
        logits = model(
            input_ids=batch[f"{side}_input_ids"], attention_mask=batch[f"{side}_attention_mask"]
        ).logits.to(torch.float32)
        result.append(sequence_logps(logits, batch[f"{side}_labels"], average_log_prob))
    return result[0], result[1], None


def forward_function(concatenated: bool) -> Callable:
    return concatenated_forward if concatenated else separate_forward


def compute_losses(
    loss_type: str,
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor | None,
    ref_rejected: torch.Tensor | None,
    beta: float,
    label_smoothing: float,
    gamma_beta_ratio: float | None = None,
    batch: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The per-pair losses for ``--dpo_loss_type`` (the trainer takes ``.mean()``)."""
    if loss_type in REFERENCE_LOSS_TYPES:
        return dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, label_smoothing)[0]
    if loss_type == "simpo":
        if gamma_beta_ratio is None:
            raise ValueError("--dpo_loss_type simpo needs --dpo_gamma_beta_ratio (upstream default is None)")
        return simpo_loss(policy_chosen, policy_rejected, beta, gamma_beta_ratio, label_smoothing)[0]
    if loss_type == "wpo":
        assert batch is not None
        return wpo_loss(
            policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, label_smoothing,
            batch["chosen_labels"] != IGNORE_INDEX, batch["rejected_labels"] != IGNORE_INDEX,
        )[0]
    raise ValueError(f"Invalid dpo loss type {loss_type}.")


def accumulate_metrics(
    local: torch.Tensor,
    loss: torch.Tensor,
    loss_type: str,
    beta: float,
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor | None,
    ref_rejected: torch.Tensor | None,
) -> None:
    """Add one micro-batch to upstream's metric vector (in place), exactly the slots upstream fills."""
    with torch.no_grad():
        local[0] += loss.detach()
        if loss_type in REFERENCE_LOSS_TYPES:
            chosen = (beta * (policy_chosen - ref_chosen)).mean()
            rejected = (beta * (policy_rejected - ref_rejected)).mean()
            local[1] += chosen
            local[2] += rejected
            local[3] += (chosen + rejected) / 2
            local[4] += (chosen > rejected).float().mean()
            local[5] += (chosen - rejected).mean()
        local[6] += policy_chosen.mean()
        local[7] += policy_rejected.mean()


def logged_metrics(global_mean: torch.Tensor, grad_accum: int, logging_steps: int, loss_type: str) -> dict:
    """Turn the rank-mean metric vector into upstream's logged dict (divided by GA * logging_steps)."""
    values = (global_mean / (grad_accum * logging_steps)).tolist()
    keys = ["train_loss", "logps/chosen", "logps/rejected"]
    if loss_type in REFERENCE_LOSS_TYPES:
        keys += ["rewards/chosen", "rewards/rejected", "rewards/average", "rewards/accuracy", "rewards/margin"]
    return {k: values[METRIC_SLOTS[k]] for k in keys}


def cache_reference_logps(model, dataloader, average_log_prob: bool, forward: Callable, epochs) -> tuple[list, list]:
    """dpo_tune_cache.py's ``get_cache_ref_logprobs``: one no-grad pass per epoch over the *training*
    dataloader (``set_epoch(epoch)`` first, so the order matches training), kept on CPU as
    ``[epoch][step] -> tensor``.  Upstream indexes the cache with the absolute epoch number, so a resume
    from a later epoch reads the wrong list; the trainer keeps that indexing."""
    chosen_all, rejected_all = [], []
    for epoch in epochs:
        if hasattr(dataloader, "set_epoch"):
            dataloader.set_epoch(epoch)
        chosen, rejected = [], []
        with torch.no_grad():
            for batch in dataloader:
                c, r, _ = forward(model, batch, average_log_prob=average_log_prob)
                chosen.append(c.cpu())
                rejected.append(r.cpu())
        chosen_all.append(chosen)
        rejected_all.append(rejected)
    return chosen_all, rejected_all
