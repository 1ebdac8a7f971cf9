"""Failure modes of real training, handled the same way by every trainer.

Divergence: a non-finite loss or gradient norm stops the run at that step, on every rank at once
(the values checked are the all-reduced ones every rank has), with a marker the CLI turns into a
failed check naming the step and the value. Out of memory: a test hook injects CUDA's OOM so the
CLI's retry-at-half-batch logic can be exercised on a CPU.
"""

from __future__ import annotations

import math
import os

from repro.base import atomic
from repro.base.contract import DIVERGED_FILE, FAULT_ENV, INJECT_OOM_ENV  # noqa: F401 (FAULT_ENV: re-exported)
from repro.base.errors import EXIT_FAILED, ReproError


class Diverged(ReproError):
    def __init__(self, step: int, name: str, value: float):
        super().__init__(f"training diverged at step {step}: {name} = {value}; stopped", EXIT_FAILED)
        self.step, self.name, self.value = step, name, value


def check_finite(output_dir: str, is_main: bool, step: int, **values: float | None) -> None:
    """Raise Diverged (after rank 0 wrote the marker) when any given value is NaN or infinite."""
    for name, value in values.items():
        if value is not None and not math.isfinite(value):
            if is_main:
                os.makedirs(output_dir, exist_ok=True)
                atomic.write_json(os.path.join(output_dir, DIVERGED_FILE),
                                  {"step": step, "metric": name, "value": str(value)}, indent=None)
            raise Diverged(step, name, value)


def maybe_inject_oom(per_device_batch: int) -> None:
    limit = os.environ.get(INJECT_OOM_ENV)
    if limit is not None and per_device_batch > int(limit):
        import torch

        raise torch.OutOfMemoryError(f"CUDA out of memory (injected by {INJECT_OOM_ENV}={limit}: per-device "
                                     f"batch {per_device_batch})")


# ---------------------------------------------------------------------------------------------
# Semantic faults for `repro mutate`: a twin block's mutant names one; the trainer breaks exactly that
# semantic when REPRO_TWIN_FAULT carries its name, so the suite can show its checks catch the bug.

#: every fault a trainer can inject, name -> what it breaks (a mutant naming another is refused)
FAULTS: dict[str, str] = {
    "nan_loss": "the end-of-step hook (harness/runtime/step.py) turns step 3's loss into NaN: the divergence stop "
                "and the finite check must catch it",
    "tool_labels_dropped": "ToolGen (harness/toolgen/train.py): the tool-token label positions are masked (-100), "
                           "as a template bug that trains only what follows each tool token would",
    "stale_activation": "Fast-LLM (harness/fast_llm/mlp.py): a recomputing level reuses the previous call's "
                        "activation in the backward",
    "labels_unshifted": "Fast-LLM (harness/fast_llm/model.py GPT.label_shift): each position is scored against its own "
                        "input token instead of the next one",
    "labels_shift_2": "Fast-LLM (harness/fast_llm/model.py GPT.label_shift): each position is scored against the token "
                      "two ahead",
    "lm_unfrozen": "AceRAG (harness/acerag/train.py): the language model's weights are left trainable, so the "
                   "optimizer updates the LM the recipe freezes",
    "clip_dropped": "open-instruct RM (harness/open_instruct/reward_modeling.py clip_value): the twin applies no clip, "
                    "as the RM twin did before issue 20 (the published run clipped at 1.0 through accelerate's "
                    "DeepSpeed plugin)",
    "reference_drift": "open-instruct DPO (harness/open_instruct/dpo_tune.py): every chosen reference log-prob "
                       "is 1 nat lower, as a reference model that is not the starting policy would give",
    "fsdp_dropped": "fms / Granite (harness/fms/sft_trainer.py, harness/granite_cp/sft_trainer.py): the model is "
                    "not sharded, as accelerate and the HF Trainer silently fall back on CPU",
    "loss_per_micro_batch": "fms (harness/fms/sft_trainer.py): each micro-batch's own token mean divided by the "
                            "accumulation steps, the pre-4.46 accumulation bug, instead of the window's token mean",
    "mxfp4_bypassed": "fms gpt-oss (harness/fms/sft_trainer.py): the expert weights are not the MXFP4 decode "
                      "(scaled by 1 + 2**-10, as a loader reading a bf16 copy would give)",
    "reward_zero": "open-instruct RLVR (harness/open_instruct/ppo_vllm_thread_ray_gtrl.py): every verifiable "
                   "reward is 0, as a broken verifier would give",
}


def active_fault() -> str | None:
    """The fault this run injects (REPRO_TWIN_FAULT), refused when no trainer knows it."""
    name = os.environ.get(FAULT_ENV) or None
    if name is not None and name not in FAULTS:
        raise ReproError(f"{FAULT_ENV}={name!r}: not a known fault (known: {', '.join(sorted(FAULTS))})")
    return name


def fault(name: str) -> bool:
    """True when this run injects `name` (a trainer's branch for one semantic fault)."""
    if name not in FAULTS:
        raise KeyError(f"fault {name!r} is not registered in harness/runtime/faults.FAULTS")
    return active_fault() == name
