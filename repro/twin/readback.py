"""Every file the suite reads back, validated when read: goldens, the trainer's refusal file, settings.json,
stage manifests. Each bad file is one ReproError line naming the file and the field and what to do
(exit 2), never a JSONDecodeError/KeyError/TypeError surfacing as an internal error.

Why one module: these files are written by another process (a trainer rank, an earlier run, a person
editing a golden) and can be empty, truncated, or of the wrong shape; the readers all follow one rule.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from repro.catalog.golden_schema import GoldenFile
from repro.catalog.loader import validation_message
from repro.base.errors import ReproError
from repro.inputs import read_text


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def read_json(path: Path, what: str, fix: str) -> object:
    """Strict JSON (no NaN/Infinity) or one line: '<path>: <what> is empty/not JSON (...); <fix>'."""
    text = read_text(path)
    if not text.strip():
        raise ReproError(f"{path}: the {what} is empty (a write was cut short); {fix}")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise ReproError(f"{path}: the {what} is not valid JSON ({exc}); {fix}") from None


GOLDEN_FIX = "restore it from git (git checkout -- FILE) or re-record it ('repro golden record ID')"


def golden(path: Path) -> dict:
    """A golden file, validated against repro.catalog.golden_schema (returned as the plain dict the
    comparison reads)."""
    data = read_json(path, "golden file", GOLDEN_FIX)
    if not isinstance(data, dict):
        raise ReproError(f"{path}: <top>: expected a JSON object; {GOLDEN_FIX}")
    try:
        GoldenFile.model_validate(data)
    except ValidationError as exc:
        raise ReproError(f"{validation_message(path, exc)}; {GOLDEN_FIX}") from None
    return data


def refusal_message(path: Path) -> str:
    """The trainer's one-line refusal, or a clear line when its file is empty or half-written (the trainer
    was stopped mid-write): the refusal itself still stands, only its text is lost."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        message = data["message"]
        if isinstance(message, str) and message.strip():
            return message
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return f"(its refusal file {path} is empty or unreadable; the trainer's own line is in the training log)"


def diverged(path: Path) -> dict:
    """The trainer's divergence marker {step, metric, value}; unreadable, it still means the run diverged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and {"step", "metric", "value"} <= set(data):
            return data
    except (OSError, ValueError):
        pass
    return {"step": "?", "metric": "loss or gradient norm", "value": f"(unreadable marker {path})"}


def settings(path: Path) -> dict | None:
    """settings.json of an --out folder (None when absent)."""
    if not path.is_file():
        return None
    fix = "pass --fresh to discard that folder's run, or use another --out"
    data = read_json(path, "run settings file", fix)
    if not isinstance(data, dict) or not isinstance(data.get("recipe"), str):
        raise ReproError(f"{path}: recipe: missing or not a string (not a repro settings file); {fix}")
    return data


def stage_manifest(run_dir: Path) -> dict | None:
    """A cached stage's manifest.json, or None when it is absent or unusable (the stage is then rebuilt)."""
    try:
        data = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"),
                          parse_constant=_reject_constant)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
