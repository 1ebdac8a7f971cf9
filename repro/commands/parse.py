"""`repro parse LOG...`: show what the verifier will read from training logs, and what it had to fix.

Issues (restarts, other ranks, NaN, unit conversions, corrupt lines) are printed but do not fail
the command: they are facts about the log. Exit 2 only when nothing could be parsed.
"""

from __future__ import annotations

import argparse
import json

from repro.base.errors import EXIT_OK
from repro.inputs import readable_input
from repro.base.metrics import json_safe
from repro.verify.parsers import FORMATS, ParseResult, parse_files

HELP = "Parse training logs (stdout, W&B CSV, trainer_state.json, TensorBoard, MLLOG, ...) into per-step metrics"

#: (record field, column title) for the table; the rest is in --json.
_COLUMNS = (
    ("loss", "loss"),
    ("lr", "lr"),
    ("grad_norm", "grad norm"),
    ("tokens_per_s_per_device", "tok/s/dev"),
    ("step_time_s", "step s"),
    ("model_tflops_per_device", "TFLOP/s/dev"),
    ("memory_gib", "mem GiB"),
)
_SHOWN_ROWS = 20  # head and tail each; a million-step table helps nobody


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("logs", metavar="LOG", nargs="+",
                        help="log file(s), in the order they were written; a directory means its TensorBoard event files")
    parser.add_argument("--format", dest="fmt", choices=list(FORMATS), default=None, metavar="FORMAT",
                        help=f"log format, one of: {', '.join(FORMATS)} (default: detected from each file's content)")
    parser.add_argument("--json", action="store_true",
                        help="print {records, issues, formats, metadata} as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    for log in args.logs:
        readable_input(log, "LOG")  # a device or FIFO would block; a missing file is named
    result = parse_files(args.logs, args.fmt)
    if args.json:
        print(json.dumps(json_safe(result.to_json()), indent=1, sort_keys=False))
    else:
        _print_table(result)
    return EXIT_OK


def _print_table(result: ParseResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    records = result.records
    shown = records if len(records) <= 2 * _SHOWN_ROWS else records[:_SHOWN_ROWS] + [None] + records[-_SHOWN_ROWS:]
    columns = [(f, t) for f, t in _COLUMNS if any(r is not None and getattr(r, f) is not None for r in shown)]
    table = Table(box=None, pad_edge=False)
    for title in ("step", "phase", *(title for _, title in columns)):
        table.add_column(title, justify="right")
    for rec in shown:
        if rec is None:
            table.add_row("...", *[""] * (len(columns) + 1))
        else:
            table.add_row(str(rec.step), rec.phase, *(_cell(getattr(rec, f)) for f, _ in columns))
    console.print(table)
    formats = ", ".join(f"{path}: {fmt}" for path, fmt in result.format.items())
    steps = f"steps {records[0].step}..{records[-1].step}" if records else "no steps"
    console.print(f"{len(records)} records ({steps}) from {formats}", markup=False)
    for issue in result.issues:
        console.print(f"  {issue}", markup=False)
    if result.metadata:
        console.print(f"metadata: {', '.join(sorted(result.metadata))}", markup=False)


def _cell(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.6g}"


