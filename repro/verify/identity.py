"""Which model, framework and GPU a log is of, where the log prints them.

A throughput or MFU claim is computed with a model's FLOPs per token: checking a torchtitan
"Building qwen3 14B" log against the Mistral-7B Fast-LLM formula gives a confident, meaningless
FAIL. The identity read here lets the verifier refuse such claims with one line instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: format -> the framework that writes it
FRAMEWORKS = {
    "open_instruct_stdout": "open-instruct", "hf_trainer_state": "HF Trainer", "hf_trainer_stdout": "HF Trainer", "llamafactory": "LLaMA-Factory",
    "fms_training_logs": "fms-hf-tuning", "fast_llm": "Fast-LLM", "megatron_stdout": "Megatron-LM",
    "torchtitan_stdout": "torchtitan", "deepspeed_stdout": "DeepSpeed", "mllog": "MLPerf reference",
}
#: (pattern, metadata key, group -> value); the first MiB of the log is searched
_PRINTED = (
    (re.compile(r"Building (\w[\w.-]*) (\w[\w.-]*) with"), "model", lambda m: f"{m.group(1)} {m.group(2)}"),
    (re.compile(r"CUDA capacity: (.+?) with [\d.]+GiB memory"), "gpu", lambda m: m.group(1).strip()),
)


def read_identity(head: str, fmt: str) -> dict[str, str]:
    """Model and GPU where printed, and the framework the format belongs to."""
    out: dict[str, str] = {}
    if fmt in FRAMEWORKS:
        out["framework"] = FRAMEWORKS[fmt]
    for pattern, key, value in _PRINTED:
        found = pattern.search(head)
        if found:
            out[key] = value(found)
    return out


def _squash(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower().replace("llama-2", "llama2").replace("llama 2", "llama2"))


def model_mismatch(identity: Mapping[str, str], claim_model: str | None, formula: str | None) -> str | None:
    """One line saying why a model-specific claim cannot be checked on this log, or None."""
    model, framework = identity.get("model"), identity.get("framework")
    if claim_model and model and _squash(claim_model) not in _squash(model) and _squash(model) not in _squash(claim_model):
        where = f" ({framework})" if framework else ""
        return (f"not comparable: the log is of {model}{where}, this claim's FLOPs are for {claim_model}; "
                "FLOPs and MFU are model-specific")
    if formula == "fast_llm" and framework and framework != "Fast-LLM":
        return (f"not comparable: the log was written by {framework}, this claim uses Fast-LLM's own FLOPs "
                "accounting, which only Fast-LLM logs follow")
    return None
