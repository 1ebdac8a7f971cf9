"""The mutant-matrix table (recipe, mutants, checks, killed) from the matrices `repro mutate` wrote:
`python tests/benchmarks/bench_mutants.py [DIR ...]` reads DIR/*/mutants.json (default runs/mutants and
runs/mut). Without matrices it says so: a figure is only printed where it was measured."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def rows(dirs: list[Path]) -> list[dict]:
    found: dict[str, dict] = {}
    for d in dirs:
        for path in sorted(d.glob("*/mutants.json")):
            m = json.loads(path.read_text(encoding="utf-8"))
            found[m["recipe"]] = {**m, "_path": path}  # a later directory wins
    return [found[k] for k in sorted(found)]


def table(matrices: list[dict]) -> str:
    lines = ["| recipe | mutants | checks | killed | loss vs upstream kills | checks killing nothing | matrix | "
             "wall s |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in matrices:
        killed = sum("killed" in x["cells"].values() for x in m["mutants"])
        checks = [c for c in m["checks"] if c not in ("step_sequence", "no_divergence")]
        ref = (f"{sum(x['cells']['loss vs upstream'] == 'killed' for x in m['mutants'])}/{len(m['mutants'])}"
               if "loss vs upstream" in m["checks"] else "no reference")
        when = f"; rescored {m['rescored']['at'][:16]}" if m.get("rescored") else ""
        lines.append(f"| {m['recipe']} | {len(m['mutants'])} | {len(checks)} | {killed}/{len(m['mutants'])} | {ref} | "
                     f"{', '.join(m['checks_killing_nothing']) or '-'} | "
                     f"{'PASSED' if m['passed'] else 'FAILED'}{'' if m.get('complete', True) else ' (--only)'}{when} | "
                     f"{m.get('wall_s', '-')} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    dirs = [Path(a) for a in argv] or [ROOT / "runs" / "mutants", ROOT / "runs" / "mut"]
    matrices = rows(dirs)
    if not matrices:
        print(f"bench_mutants: no mutants.json under {', '.join(map(str, dirs))}: run 'nox -s mutants' or "
              "'repro mutate ID --out runs/mutants/ID' first")
        return 0
    print(table(matrices))
    for m in matrices:
        for p in m["problems"]:
            print(f"bench_mutants: {m['recipe']}: {p[:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
