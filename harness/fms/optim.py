"""The optimizer and schedule fms-hf-tuning's HF Trainer builds, shared by the fms and Granite CP twins."""

from __future__ import annotations

from typing import Any

from repro.base.errors import ReproError


def optimizer_and_scheduler(model, args: dict[str, Any], warmup_steps: int, max_steps: int):
    """AdamW with HF's decay groups (no decay for biases and norm weights, get_decay_parameter_names) and
    the named scheduler; options the twins do not model are refused in one line."""
    import torch
    from transformers import get_scheduler

    if args["optim"] not in ("adamw_torch", "adamw_torch_fused"):
        raise ReproError(f"--optim {args['optim']!r} is not part of the fms twins (adamw_torch is fms's default)")
    wd = float(args["weight_decay"])
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if not (n.endswith("bias") or "norm" in n.lower())]
    no_decay = [p for n, p in named if n.endswith("bias") or "norm" in n.lower()]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=float(args["learning_rate"]), betas=(float(args["adam_beta1"]), float(args["adam_beta2"])),
                            eps=float(args["adam_epsilon"]), foreach=False)
    kwargs = args["lr_scheduler_kwargs"] or {}
    if not isinstance(kwargs, dict):
        raise ReproError(f"--lr_scheduler_kwargs {kwargs!r}: expected a JSON object")
    try:
        scheduler = get_scheduler(args["lr_scheduler_type"], opt, num_warmup_steps=warmup_steps,
                                  num_training_steps=max_steps, scheduler_specific_kwargs=kwargs)
    except (TypeError, ValueError) as exc:
        raise ReproError(f"--lr_scheduler_type {args['lr_scheduler_type']} --lr_scheduler_kwargs {kwargs}: {exc}") from None
    return opt, scheduler
