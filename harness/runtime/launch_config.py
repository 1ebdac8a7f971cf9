"""Launcher configs as the trainer sees them: the DeepSpeed JSON accelerate hands over, read so that a
missing or malformed file is bad input (exit 2), not a launcher traceback."""

from __future__ import annotations

import json
import os

from repro.base.device import cuda_usable
from repro.base.errors import ReproError


def deepspeed_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def check_deepspeed_launch() -> dict:
    """Under `accelerate launch --use_deepspeed`: CUDA must exist (on CPU accelerate silently drops it)
    and the config must parse. Returns the config ({} when DeepSpeed is not requested)."""
    if not deepspeed_requested():
        return {}
    if not cuda_usable():
        raise ReproError("DeepSpeed launch needs CUDA (on CPU accelerate silently drops it); on CPU use "
                         "'accelerate launch --multi_gpu --num_processes N'")
    return read_deepspeed_config(os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"))


def read_deepspeed_config(path: str | None) -> dict:
    """The recipe's DeepSpeed JSON (accelerate fills its "auto" fields, gradient_clipping "auto" -> 1.0).

    Read here so that a missing or malformed file is bad input (exit 2) instead of a launcher traceback.
    """
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            config = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ReproError(f"DeepSpeed config {path}: {exc}") from None
    if not isinstance(config, dict):
        raise ReproError(f"DeepSpeed config {path}: not a JSON object")
    return config


def describe_deepspeed_config(config: dict) -> str:
    """One log line with what decides the run's numerics (stage, bf16, clipping after accelerate)."""
    stage = config.get("zero_optimization", {}).get("stage")
    clip = config.get("gradient_clipping", "auto")
    bf16 = config.get("bf16", {}).get("enabled")
    clip_note = " (accelerate: 1.0)" if clip == "auto" else ""
    return f"DeepSpeed: ZeRO stage {stage}, bf16 {bf16}, gradient_clipping {clip}{clip_note}"
