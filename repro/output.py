"""Terminal output shared by the commands: plain aligned tables, no colour when piped."""

from __future__ import annotations

import sys
from typing import Any, Iterable


def table(rows: Iterable[dict[str, Any]], columns: list[str], file=None) -> None:
    out = file or sys.stdout
    rows = list(rows)
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip(), file=out)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip(), file=out)


def _cell(value: Any) -> str:
    if value is True:
        return "yes"
    if value is False:
        return "no"
    return "" if value is None else str(value)
