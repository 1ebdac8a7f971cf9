"""The trainer contract: every name the CLI and a twin trainer exchange, in one module both import.

The CLI starts a trainer with an environment (the asset map, the refusal file, test hooks) and reads
back what the trainer leaves in its output folder (metrics, markers) and its exit code. A literal
written on one side only is a silent break of the other, so each lives here once.
"""

from __future__ import annotations

from repro.base.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK  # noqa: F401  (the exit-code part)

#: Ctrl-C / SIGTERM: the trainer and the CLI both end with this code and one line.
EXIT_INTERRUPTED = 130

# --- environment the CLI sets for the trainer -------------------------------------------------
#: JSON map {"models": {hub id: folder}, "datasets": {...}, "keys": {asset: key}} (harness.runtime.hub).
ASSET_MAP_ENV = "REPRO_TWIN_ASSET_MAP"
#: Where a trainer records the input it refused: launchers (torchrun) turn a child's exit 2 into 1,
#: so the CLI reads the reason from this file instead of the exit code.
BAD_INPUT_ENV = "REPRO_TWIN_BAD_INPUT_FILE"
#: Offline by construction: the CLI sets these for every trainer (twins never download) ...
HUB_OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
}
#: ... and a trainer sets them again (setdefault) before any library import that could reach a hub, with
#: tokenizers' fork warning off.
OFFLINE_ENV = {**HUB_OFFLINE_ENV, "TOKENIZERS_PARALLELISM": "false"}
#: The one device rule's override (repro.base.device): train as a CPU machine even with a GPU.
FORCE_CPU_ENV = "REPRO_FORCE_CPU"

# --- test hooks (tests set them; a normal run never does) --------------------------------------
#: Raise CUDA's out-of-memory error when the per-device batch is larger than this (the retry path).
INJECT_OOM_ENV = "REPRO_TWIN_INJECT_OOM_ABOVE"
#: SIGKILL the trainer after step N (resume tests).
KILL_AFTER_STEP_ENV = "REPRO_TWIN_KILL_AFTER_STEP"
#: A named semantic fault a trainer injects (its checks must then fail).
FAULT_ENV = "REPRO_TWIN_FAULT"

# --- files the trainer leaves for the CLI ------------------------------------------------------
#: One normalized record per optimizer step (repro.base.metrics), rank 0, in the run's output folder.
METRICS_FILE = "metrics.jsonl"
#: The refusal file's name beside the asset map ({"prog", "message"}).
BAD_INPUT_FILE = "BAD_INPUT.json"
#: {step, metric, value}: the trainer stopped on a non-finite loss or gradient norm.
DIVERGED_FILE = "DIVERGED.json"
#: A checkpoint folder counts only with this marker (written last).
COMPLETED = "COMPLETED"
