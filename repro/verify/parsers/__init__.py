"""Training logs in every common format -> one normalized list of ``MetricRecord``.

Each format is one module with ``parse(path) -> (records, issues)``, ``sniff(name, head)`` and a
one-line ``DESCRIPTION``; line formats also expose ``parse_line`` (pure, one line) and
``parse_lines(lines, source)``. Modules that also read run settings (``mllog``,
``hf_trainer_state``) add ``parse_with_metadata(path) -> (records, issues, metadata)``.

``parse_files`` is the one entry point the verifier and the CLI use: it detects formats, parses,
then keeps one record per (phase, step) - lowest rank, last occurrence after a restart - and
returns every irregularity as a ``ParseIssue`` instead of failing. Only input that cannot be
read at all (missing file, unknown format, nothing parsed) raises ``ReproError``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from repro.base.errors import ReproError
from repro.base.metrics import MetricRecord
from repro.verify.parsers import (
    deepspeed_stdout,
    fast_llm,
    fms_training_logs,
    hf_trainer_state,
    megatron_stdout,
    mllog,
    open_instruct_stdout,
    repro_metrics,
    tensorboard,
    torchtitan_stdout,
    wandb_csv,
)
from repro.verify.parsers._common import KINDS, ParseIssue, gc_paused
from repro.verify.parsers._normalize import normalize

__all__ = ["FORMATS", "KINDS", "ParseIssue", "ParseResult", "detect_format", "parse_files"]

#: format name -> module, in the order ``--format`` lists them.
FORMATS: dict[str, ModuleType] = {
    "open_instruct_stdout": open_instruct_stdout,
    "wandb_csv": wandb_csv,
    "hf_trainer_state": hf_trainer_state,
    "fms_training_logs": fms_training_logs,
    "fast_llm": fast_llm,
    "megatron_stdout": megatron_stdout,
    "torchtitan_stdout": torchtitan_stdout,
    "deepspeed_stdout": deepspeed_stdout,
    "mllog": mllog,
    "tensorboard": tensorboard,
    "repro_metrics": repro_metrics,
}

_HEAD_BYTES = 1 << 20  # the first MiB decides, unless it holds no metric line at all
_CHUNK_BYTES = 8 << 20


@dataclass
class ParseResult:
    records: list[MetricRecord]
    issues: list[ParseIssue]
    format: dict[str, str]
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "records": [r.to_json() for r in self.records],
            "issues": [i.to_json() for i in self.issues],
            "formats": dict(self.format),
            "metadata": self.metadata,
        }


def detect_format(path: Path | str) -> str:
    """Name of the format whose metric lines the file holds most of.

    Content decides, not the extension: ``train.log`` may be any stdout format and a
    ``.jsonl`` may be fms-hf-tuning's or ours. Long preambles (config dumps) are read past in
    chunks until some format recognises a metric line.
    """
    path = Path(path)
    if path.is_dir():
        if tensorboard.event_files(path):
            return "tensorboard"
        raise ReproError(f"{path}: a directory without events.out.tfevents.* files; pass log files instead")
    if tensorboard.sniff(path.name, ""):
        return "tensorboard"
    for head in _heads(path):
        scores = {name: module.sniff(path.name, head) for name, module in FORMATS.items()}
        best = max(scores, key=scores.__getitem__)
        if scores[best] > 0:
            return best
    raise ReproError(f"{path}: cannot tell the log format; pass --format, one of: {', '.join(FORMATS)}")


def parse_files(paths: Iterable[Path | str], fmt: str | None = None) -> ParseResult:
    """Parse every file (a directory means its TensorBoard event files) into one result."""
    if fmt is not None and fmt not in FORMATS:
        raise ReproError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    written: list[MetricRecord] = []
    issues: list[ParseIssue] = []
    formats: dict[str, str] = {}
    metadata: dict[str, Any] = {}
    with gc_paused():
        for path in _expand([Path(p) for p in paths]):
            name = str(path)
            if _size(path) == 0:
                formats[name] = fmt or "unknown"
                issues.append(ParseIssue(name, None, "empty", "empty file; nothing to parse"))
                continue
            formats[name] = fmt or detect_format(path)
            records, file_issues, file_metadata = _parse_one(FORMATS[formats[name]], path)
            issues.extend(file_issues)
            if not records:
                issues.append(ParseIssue(name, None, "no_records", f"no {formats[name]} metric records found"))
            written.extend(records)
            _merge_metadata(metadata, file_metadata, name, issues)
        if not written:
            listed = ", ".join(f"{p} ({formats.get(p, '?')})" for p in formats) or "no files"
            raise ReproError(f"no metric records in {listed}; check the files or pass --format, one of: "
                             f"{', '.join(FORMATS)}")
        records, normalize_issues = normalize(written)
    return ParseResult(records, issues + normalize_issues, formats, metadata)


def _parse_one(module: ModuleType, path: Path) -> tuple[list[MetricRecord], list[ParseIssue], dict[str, Any]]:
    """One file through its module; a parser bug on odd input becomes an issue, not a traceback."""
    try:
        if hasattr(module, "parse_with_metadata"):
            return module.parse_with_metadata(path)
        records, issues = module.parse(path)
        return records, issues, {}
    except OSError as exc:
        raise ReproError(f"{path}: cannot read ({exc.strerror or exc}); check the path and permissions") from None
    except Exception as exc:  # noqa: BLE001 - the contract is "report, never crash"
        return [], [ParseIssue(str(path), None, "corrupt", f"{module.__name__} failed: {type(exc).__name__}: {exc}")], {}


def _expand(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = tensorboard.event_files(path)
            if not found:
                raise ReproError(f"{path}: a directory without events.out.tfevents.* files; pass log files instead")
            out.extend(found)
        else:
            out.append(path)
    return out


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise ReproError(f"{path}: cannot read ({exc.strerror or exc}); check the path") from None


def _heads(path: Path) -> Iterable[str]:
    """The first MiB, then the rest in chunks, as text; sniffers only count matches."""
    try:
        with open(path, "rb") as fh:
            chunk = fh.read(_HEAD_BYTES)
            while chunk:
                yield chunk.decode("utf-8", errors="replace")
                chunk = fh.read(_CHUNK_BYTES)
    except OSError as exc:
        raise ReproError(f"{path}: cannot read ({exc.strerror or exc}); check the path and permissions") from None


def _merge_metadata(into: dict[str, Any], new: dict[str, Any], file: str, issues: list[ParseIssue]) -> None:
    """First file wins; a disagreeing later file is reported (two runs passed as one?)."""
    for key, value in new.items():
        if key in into and into[key] != value:
            issues.append(ParseIssue(file, None, "metadata_conflict",
                                     f"{key} = {value!r} here but {into[key]!r} in an earlier file; kept the earlier"))
        else:
            into.setdefault(key, value)
