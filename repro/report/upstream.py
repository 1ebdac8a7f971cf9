"""An upstream run's verdict and report (verdict.json, report.md, loss_curve.png), as a twin run has."""

from __future__ import annotations

import json
import os
from pathlib import Path

from repro.metrics import MetricRecord
from repro.twin.checks import series
from repro.verify.checks import FAIL, PASS, CheckResult


def checks(recipe, records: list[MetricRecord], manifest: dict) -> list[CheckResult]:
    """Steps 1..N each once, then the run against its committed reference (same env lock: the same curve)."""
    from repro.upstream import reference

    steps = [r.step for r in records]
    ok = bool(steps) and steps == list(range(1, len(steps) + 1))
    out = [CheckResult("step sequence", PASS if ok else FAIL, len(steps), None, "exact", "the upstream's own log",
                       f"steps 1..{len(steps)}, each once" if ok else f"steps {steps[:8]}...: gaps or repeats")]
    return out + reference.compare(recipe, records, manifest["assets"])


def chart(recipe, records: list[MetricRecord], path: Path) -> Path | None:
    from repro.twin.assets import CACHE_DIR
    from repro.upstream import reference

    os.environ.setdefault("MPLCONFIGDIR", str(CACHE_DIR / "matplotlib"))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    ax.plot(*series(records, "loss"), marker="o", ms=3, label="this upstream run")
    ref = reference.load(recipe.id)
    if ref and "loss" in ref["metrics"]:
        v = ref["metrics"]["loss"]["values"]
        ax.plot([int(s) for s in v], list(v.values()), ls="--", color="gray", label="committed upstream reference")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss (the upstream's log)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_outputs(recipe, out: Path, manifest: dict, records: list[MetricRecord]) -> dict:
    results = checks(recipe, records, manifest)
    verdict = {"recipe": recipe.id, "scale": "upstream", "passed": all(c.status == PASS for c in results),
               "checks": [{"name": c.name, "status": c.status, "passed": c.status == PASS, "measured": c.measured,
                           "expected": c.expected, "tolerance": c.tolerance, "source": c.source,
                           "message": c.message} for c in results]}
    (out / "verdict.json").write_text(json.dumps(verdict, indent=2) + "\n", encoding="utf-8")
    png = chart(recipe, records, out / "loss_curve.png")
    up, env = manifest["upstream"], manifest["environment"]
    lines = [f"# {recipe.id} — upstream run at twin scale: {'PASSED' if verdict['passed'] else 'FAILED'}", "",
             f"The real {up['repo']} at {up['commit']} (source verified by {up['verified_by']}), in its own "
             f"environment {env['name']} (lock sha256 `{env['lock_sha256']}`), on the twin's assets at the twin's "
             "geometry.", "", "## Checks", "", "| check | status | message |", "| --- | --- | --- |"]
    lines += [f"| {c['name']} | {c['status']} | {c['message'].replace('|', '/')} |" for c in verdict["checks"]]
    lines += ["", f"![loss curve]({png.name})" if png else "(matplotlib missing: no chart)", "",
              "## CPU changes (declared in the recipe's twin.upstream block)", ""]
    lines += [f"- {c['what']}: {c['why']}" for c in manifest["cpu_changes"]] or ["- none"]
    lines += ["", "```", manifest["command"], "```", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    return verdict
