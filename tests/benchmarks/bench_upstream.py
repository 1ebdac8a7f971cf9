"""The upstream lane's coverage table (README "The upstream lane"): for every recipe, whether its real upstream ran
at twin scale (a committed expected/upstream/<id>/cpu.json) or why not, the max relative loss difference between
the twin's golden and that reference, and the tolerance with its reason. Reads committed files only; runs nothing.

    python tests/benchmarks/bench_upstream.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from repro.report.upstream import coverage, coverage_markdown  # noqa: E402

if __name__ == "__main__":
    print(coverage_markdown(coverage()))
