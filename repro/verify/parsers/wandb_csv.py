"""Weights & Biases CSV exports: a chart export (``Step, <run> - train_loss, <run> - train_loss__MIN,
...``) or a run-history export (``_step, train_loss, learning_rate, ...``).

``__MIN``/``__MAX`` columns are W&B's smoothing envelope, not data, and ``_runtime`` and
``_timestamp`` are bookkeeping; all are ignored. A chart export may hold several runs; mixing
them would fake restarts, so only the first run is read and the others are reported.

Known metric names map onto core fields: open-instruct SFT (``train_loss``, ``learning_rate``,
``per_device_tps`` - tokens/s per device already), DPO (``train_loss``), RM (``train/rm/loss``,
``train/rm/lr``), PPO/RLVR (``lr``) and HF Trainer's W&B names (``train/loss``, ``eval/loss``).
Columns named ``eval...`` make a separate eval-phase record. Every other numeric column goes to
``extra`` under its metric name (``logps/chosen``, ``objective/kl``, ``total_tokens``, ...).
"""

from __future__ import annotations

import csv
from pathlib import Path

from repro.base.metrics import MetricRecord
from repro.verify.parsers._common import IssueLog, NonFiniteTally, ParseIssue, to_step

DESCRIPTION = "Weights & Biases CSV export (Step/_step column + metric columns)"

STEP_COLUMNS = ("Step", "_step", "step", "global_step", "train/global_step", "training_step")
_CORE = {
    "train_loss": "loss",
    "train/loss": "loss",
    "loss": "loss",
    "train/rm/loss": "loss",
    "learning_rate": "lr",
    "train/learning_rate": "lr",
    "lr": "lr",
    "train/rm/lr": "lr",
    "grad_norm": "grad_norm",
    "train/grad_norm": "grad_norm",
    "per_device_tps": "tokens_per_s_per_device",
}
_EVAL_LOSS = {"eval_loss", "eval/loss", "eval/rm/loss"}


def sniff(name: str, head: str) -> int:
    first = head.removeprefix("\ufeff").split("\n", 1)[0]
    cells = [c.strip().strip('"') for c in first.split(",")]
    return 10 if len(cells) > 1 and any(c in STEP_COLUMNS for c in cells) else 0


def parse(path: Path | str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        text = fh.read()
    return parse_text(text, str(path))


def parse_text(text: str, source: str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    text = text.removeprefix("\ufeff")  # spreadsheet round-trips add a byte-order mark
    issues = IssueLog(source)
    reader = csv.reader(text.splitlines(keepends=True))
    header = next(reader, None)
    if not header:
        return [], issues.done()
    names = [name.strip() for name in header]
    step_col = next((names.index(c) for c in STEP_COLUMNS if c in names), None)  # by priority, not position
    if step_col is None:
        issues.add(1, "corrupt", f"no step column (one of {', '.join(STEP_COLUMNS)}) in the header")
        return [], issues.done()
    columns = _metric_columns(header, step_col, issues)
    records: list[MetricRecord] = []
    tally = NonFiniteTally()
    text_columns: set[int] = set()
    cut_line = text.count("\n") + 1 if not text.endswith(("\n", "\r")) else None
    for row in reader:
        lineno = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            kind = "truncated" if lineno == cut_line else "corrupt"
            issues.add(lineno, kind, f"dropped: {len(row)} cells where the header has {len(header)}")
            continue
        if lineno == cut_line:
            issues.add(lineno, "truncated", "last row has no newline; kept, but its last value may be cut")
        try:
            step = to_step(row[step_col])
        except ValueError:
            issues.add(lineno, "corrupt", f"dropped: step {row[step_col]!r} is not an integer")
            continue
        for rec in _row_records(row, step, columns, issues, lineno, text_columns):
            rec.source = f"{source}:{lineno}"
            tally.check(rec, lineno)
            records.append(rec)
    tally.report(issues)
    return records, issues.done()


def _metric_columns(header: list[str], step_col: int, issues: IssueLog) -> dict[int, str]:
    """Column index -> metric name, for the first run only, without W&B's envelope columns."""
    runs: list[str] = []
    columns: dict[int, str] = {}
    for i, raw in enumerate(header):
        name = raw.strip()
        if i == step_col or name.endswith(("__MIN", "__MAX")):
            continue
        run, sep, metric = name.rpartition(" - ")
        if not sep:
            run, metric = "", name
        if metric.startswith("_"):
            continue
        if run not in runs:
            runs.append(run)
        if run == runs[0]:
            columns[i] = metric
    if len(runs) > 1:
        issues.add(1, "skipped", f"export holds {len(runs)} runs; read '{runs[0]}', ignored {', '.join(runs[1:])}")
    return columns


def _row_records(row, step, columns, issues: IssueLog, lineno: int, text_columns: set[int]) -> list[MetricRecord]:
    """One train record and one eval record per row, each only if the row has values for it
    (W&B history is sparse: eval metrics exist only on eval steps)."""
    train = MetricRecord(step=step)
    evals = MetricRecord(step=step, phase="eval")
    has_train = has_eval = False
    for i, metric in columns.items():
        cell = row[i].strip()
        if not cell:
            continue
        try:
            value = float(cell)
        except ValueError:
            if i not in text_columns:
                text_columns.add(i)
                issues.add(lineno, "skipped", f"column {metric!r} holds text ({cell[:40]!r}); ignored")
            continue
        if metric.startswith("eval"):
            has_eval = True
            if metric in _EVAL_LOSS:
                evals.loss = value
            else:
                evals.extra[metric] = value
        else:
            has_train = True
            core = _CORE.get(metric)
            if core is not None and getattr(train, core) is None:
                setattr(train, core, value)
            else:
                train.extra[metric] = value
    return [rec for rec, present in ((train, has_train), (evals, has_eval)) if present]
