"""open-instruct stdout: ``Step: N, LR: x, Loss: y, TPS: z`` (``finetune.py``) and ``Step: N, LR: x, Loss: y``
with an optional `` Aux Loss: a`` (``dpo_tune.py`` / ``dpo_tune_cache.py``, which log no TPS).

At the Tulu 3 commit (30d11b4) TPS is ``total_tokens / elapsed`` over ALL processes and since
the start of the loop; the per-device figure needs the process count, which the line does not
carry, so TPS is kept as ``extra["tps_global"]`` and ``tokens_per_s_per_device`` stays empty
rather than being invented.
"""

from __future__ import annotations

import re
from pathlib import Path

from repro.base.metrics import MetricRecord
from repro.verify.parsers._common import ParseIssue, find_rank
from repro.verify.parsers._files import parse_file
from repro.verify.parsers._lines import scan_lines

DESCRIPTION = "open-instruct stdout 'Step: N, LR: x, Loss: y[, TPS: z]' (finetune.py, dpo_tune*.py)"
MARKER = "Step: "

_LINE = re.compile(r"Step: (\d+), LR: ([^,\s]+), Loss: ([^,\s]+)(?:, TPS: ([^,\s]+))?(?: Aux Loss: ([^,\s]+))?")
_HEAD = re.compile(r"Step: \d+, LR: ")
_SNIFF = re.compile(r"Step: \d+, LR: \S+, Loss: ")


def sniff(name: str, head: str) -> int:
    """Metric lines found in the head of the file (the registry picks the best-scoring format)."""
    return len(_SNIFF.findall(head))


def parse_line(line: str) -> MetricRecord | None:
    """One regex for the whole line (its literal ``Step: `` prefix makes the search fast); a
    line that starts like a metric line but does not match is cut or corrupt and is reported."""
    found = _LINE.search(line)
    if found is None:
        if _HEAD.search(line) is not None:
            raise ValueError("expected 'Step: N, LR: x, Loss: y[, TPS: z]'")
        return None
    step, lr, loss, tps, aux = found.groups()
    extra = {"tps_global": float(tps)} if tps is not None else {}
    if aux is not None:
        extra["aux_loss"] = float(aux)
    return MetricRecord(
        step=int(step),
        loss=float(loss),
        lr=float(lr),
        rank=find_rank(line, found.start()),
        extra=extra,
    )


def may_be_non_finite(line: str) -> bool:
    """The numbers are Python ``str(float)``, which spells non-finite values only as nan/inf."""
    return "nan" in line or "inf" in line


def parse_lines(lines, source: str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    return scan_lines(lines, source, MARKER, parse_line, hint=may_be_non_finite)


def parse(path: Path | str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    return parse_file(path, MARKER, parse_line, hint=may_be_non_finite)
