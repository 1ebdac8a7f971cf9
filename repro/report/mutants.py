"""The mutant matrix in words: mutants.md beside mutants.json, and the same table in the plain run's
report.md (repro.twin.mutate computes it)."""

from __future__ import annotations

from pathlib import Path

from repro.report.twin import write_outputs
from repro.twin.mutate import KILLED, NOT_MEASURED, PLAIN, SURVIVED, Row
from repro.twin.verdict import evaluate
from repro.twin import golden


def markdown(result: dict) -> str:
    """The matrix as a markdown table: one row per mutant, one column per check (X killed, . survived)."""
    ids = result["checks"]
    mark = {KILLED: "X", SURVIVED: ".", NOT_MEASURED: "?"}
    lines = [f"## Mutant matrix: {result['recipe']} — {'PASSED' if result['passed'] else 'FAILED'}", "",
             "X: the check failed on the mutant (killed it); .: it passed; *: a kill the mutant declares.", "",
             "| mutant | " + " | ".join(ids) + " |", "| --- |" + " --- |" * len(ids)]
    for m in result["mutants"]:
        lines.append(f"| {m['name']} | " + " | ".join(
            mark[m["cells"][c]] + ("*" if c in m["kills"] else "") for c in ids) + " |")
    lines += ["", "Mutants:", ""] + [f"- **{m['name']}**: {m['why']}" for m in result["mutants"]]
    if result["problems"]:
        lines += ["", "Problems:", ""] + [f"- {p}" for p in result["problems"]]
    return "\n".join(lines) + "\n"


def write(out: Path, result: dict, plain: Row) -> Path:
    """mutants.md, and the plain run's own report (verdict.json, report.md) with the matrix appended."""
    md = markdown(result)
    (out / "mutants.md").write_text(md, encoding="utf-8")
    if plain.run is not None and plain.manifest is not None:
        key = plain.manifest["env_key"]
        ref = golden.find(plain.run.recipe.id, key)
        write_outputs(plain.run, evaluate(plain.run, ref, key), plain.manifest, ref)
        with open(out / PLAIN / "report.md", "a", encoding="utf-8") as fh:
            fh.write("\n" + md)
    return out / "mutants.md"
