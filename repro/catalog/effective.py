"""What a launcher config really runs with: DeepSpeed's "auto" values as the launcher fills them.

The published runs go through DeepSpeed JSON files whose "auto" entries are filled at launch time
by whoever hands the file to DeepSpeed: accelerate's `_prepare_deepspeed` (`--deepspeed_config_file`
on `accelerate launch`) or the HF Trainer (`--deepspeed FILE` on the entry point). The filled value
is not in the file, and sometimes not in any flag either (accelerate fills gradient_clipping "auto"
with 1.0: the Tulu 3 SFT run clipped at 1.0 although finetune.py's --clip_grad_norm is -1). A key the
file omits falls back to DeepSpeed's default, which moved (gradient_clipping 0.0 -> 1.0 in 0.19.3).
So every recipe declares the effective values (config_files[].effective) and lint recomputes the
ones these rules can derive.
"""

from __future__ import annotations

import json
from typing import Any

from repro.catalog.schema import ConfigFile, Recipe

AUTO = "auto"


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else key))
    return out


def filler(recipe: Recipe, config: ConfigFile) -> str | None:
    """Who fills the file's "auto"s: 'accelerate', 'hf-trainer', or None (not a DeepSpeed file we know)."""
    if config.role != "deepspeed" or config.format != "json":
        return None
    if any(a.flag == "--deepspeed_config_file" and config.ref in a.values for a in recipe.command.launcher.args):
        return "accelerate"
    if any(a.flag == "--deepspeed" and config.ref in a.values for a in recipe.command.args):
        return "hf-trainer"
    return None


def _arg(recipe: Recipe, flag: str) -> str | None:
    return next((a.values[0] for a in recipe.command.args if a.flag == flag and a.values), None)


def derived(recipe: Recipe, config: ConfigFile, data: dict) -> dict[str, Any]:
    """The effective values these rules can compute at the published topology."""
    who = filler(recipe, config)
    if who is None:
        return {}
    flat = flatten(data)
    b = recipe.batch
    out: dict[str, Any] = {}
    batch_values = {"train_micro_batch_size_per_gpu": b.per_device, "gradient_accumulation_steps": b.grad_accum,
                    "train_batch_size": b.effective}
    out.update({k: v for k, v in batch_values.items() if flat.get(k) == AUTO})
    if flat.get("gradient_clipping") == AUTO:
        if who == "accelerate":
            launcher_clip = next((a.values[0] for a in recipe.command.launcher.args
                                  if a.flag == "--gradient_clipping" and a.values), None)
            out["gradient_clipping"] = float(launcher_clip) if launcher_clip else 1.0
        else:
            out["gradient_clipping"] = float(_arg(recipe, "--max_grad_norm") or 1.0)
    return out


def findings(recipe: Recipe, config: ConfigFile, text: str) -> list[str]:
    """Problems with a config's declared effective values (empty when all is declared and agrees)."""
    if filler(recipe, config) is None:
        return []
    data = json.loads(text)
    flat = flatten(data)
    problems = []
    for key in sorted(k for k, v in flat.items() if v == AUTO):
        if key not in config.effective:
            problems.append(f"{config.file}: {key} is \"auto\" but config_files[].effective does not say what "
                            f"the {filler(recipe, config)} launch fills it with")
    if "gradient_clipping" not in flat and "gradient_clipping" not in config.effective:
        problems.append(f"{config.file}: no gradient_clipping key, so DeepSpeed's default applies (0.0 before "
                        "0.19.3, 1.0 from 0.19.3); declare the effective value for the pinned version")
    for key, value in derived(recipe, config, data).items():
        if key in config.effective and config.effective[key] != value:
            problems.append(f"{config.file}: effective {key} is declared {config.effective[key]!r} but the "
                            f"{filler(recipe, config)} launch gives {value!r}")
    if config.effective and not config.effective_source:
        problems.append(f"{config.file}: effective values need an effective_source saying how they were derived")
    return problems
