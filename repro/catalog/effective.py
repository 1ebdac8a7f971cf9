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


#: accelerate's DeepSpeed plugin (an accelerate YAML with distributed_type DEEPSPEED and no
#: deepspeed_config_file) builds the DeepSpeed config itself: the keys its deepspeed_config section sets,
#: the rest "auto" (gradient_clipping among them unless the section, ACCELERATE_GRADIENT_CLIPPING or
#: --gradient_clipping gives one), which Accelerator._prepare_deepspeed then fills (gradient_clipping: 1.0)
PLUGIN = "accelerate-plugin"
PLUGIN_KEYS = ("gradient_clipping",)


def plugin_config(recipe: Recipe, config: ConfigFile, data: dict) -> dict:
    """The DeepSpeed keys accelerate's plugin builds from an accelerate YAML ("auto" where it leaves them)."""
    ds = data.get("deepspeed_config") or {}
    launcher_clip = next((a.values[0] for a in recipe.command.launcher.args
                          if a.flag == "--gradient_clipping" and a.values), None)
    clip = ds.get("gradient_clipping", launcher_clip)
    return {"gradient_clipping": float(clip) if clip is not None else AUTO}


def filler(recipe: Recipe, config: ConfigFile, data: dict | None = None) -> str | None:
    """Who fills the file's "auto"s: 'accelerate', 'hf-trainer', 'accelerate-plugin' (an accelerate YAML
    whose DeepSpeed plugin builds the config), or None (not a DeepSpeed config we know)."""
    if config.role == "accelerate" and data is not None:
        ds = data.get("deepspeed_config") or {}
        if str(data.get("distributed_type", "")).upper() == "DEEPSPEED" and not ds.get("deepspeed_config_file"):
            return PLUGIN
        return None
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
    who = filler(recipe, config, data)
    if who is None:
        return {}
    if who == PLUGIN:
        return {k: 1.0 if v == AUTO else v for k, v in plugin_config(recipe, config, data).items()}
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
    data = load(config, text)
    who = filler(recipe, config, data)
    if who is None:
        return []
    if who == PLUGIN:
        return plugin_findings(recipe, config, data)
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


def load(config: ConfigFile, text: str) -> dict:
    if config.format == "json":
        return json.loads(text)
    import yaml

    data = yaml.safe_load(text)
    return data if isinstance(data, dict) else {}


def plugin_findings(recipe: Recipe, config: ConfigFile, data: dict) -> list[str]:
    """An accelerate YAML whose DeepSpeed plugin builds the config: the values it runs with must be declared,
    and a clip it applies must reach the twin (config_effects), since the CPU twin runs no DeepSpeed."""
    built = plugin_config(recipe, config, data)
    problems = []
    for key, value in derived(recipe, config, data).items():
        how = ("accelerate's DeepSpeed plugin leaves it \"auto\" (no deepspeed_config." + key + " here) and "
               "Accelerator._prepare_deepspeed fills it with " + repr(value)) if built[key] == AUTO else \
            f"deepspeed_config.{key} sets it to {value!r}"
        if key not in config.effective:
            problems.append(f"{config.file}: the DeepSpeed config accelerate builds from this file has {key} "
                            f"{value!r} ({how}); declare config_files[].effective.{key}: {value!r}")
        elif config.effective[key] != value:
            problems.append(f"{config.file}: effective {key} is declared {config.effective[key]!r} but the "
                            f"accelerate DeepSpeed plugin gives {value!r} ({how})")
    clip = derived(recipe, config, data).get("gradient_clipping")
    twin = recipe.twin
    if clip and twin is not None and not any(e.config == config.file and e.key == "gradient_clipping"
                                             for e in twin.config_effects):
        problems.append(f"{config.file}: the published run clipped gradients at {clip!r} (accelerate's DeepSpeed "
                        "plugin) but the twin, which runs without DeepSpeed, applies no clip: add a "
                        "twin.config_effects entry (config, key gradient_clipping, the flag that applies it)")
    if config.effective and not config.effective_source:
        problems.append(f"{config.file}: effective values need an effective_source saying how they were derived")
    return problems
