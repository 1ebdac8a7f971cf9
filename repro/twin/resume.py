"""Whether a run really resumed: the trainer says where it started (harness.runtime.metrics.STARTED_FILE).

Why: the CLI's guess from the folders in --out was recorded as `resumed: {from: epoch_0}` while the
trainer, finding that checkpoint incomplete (a full disk stopped it before its COMPLETED marker),
started at step 0. The manifest records a resume only when the trainer's own report says so.
"""

from __future__ import annotations

import json
from pathlib import Path

from repro.base.contract import STARTED_FILE


def started_step(out_dir: Path) -> int | None:
    """The step the trainer started after (0: from scratch), or None when it reported nothing."""
    for path in sorted((out_dir / "train").glob(f"*/{STARTED_FILE}")):
        try:
            step = json.loads(path.read_text(encoding="utf-8")).get("resume_step")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(step, int) and not isinstance(step, bool):
            return step
    return None


def confirmed(guess: dict | None, out_dir: Path) -> dict | None:
    """The resume record for manifest.json: the folder's guess, kept only when the trainer resumed."""
    step = started_step(out_dir)
    if not step:
        return None
    return {**(guess or {"from": "(the trainer's own checkpoint)"}), "step": step}


def clear(out_dir: Path) -> None:
    """Before a launch: a report left by an earlier attempt must not speak for this one."""
    for path in (out_dir / "train").glob(f"*/{STARTED_FILE}"):
        path.unlink(missing_ok=True)
