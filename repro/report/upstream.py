"""An upstream run's verdict and report (verdict.json, report.md, loss_curve.png), as a twin run has."""

from __future__ import annotations

import json
import os
from pathlib import Path

from repro.base.metrics import MetricRecord
from repro.twin.checks import series
from repro.base.curves import FAIL, PASS, CheckResult


def checks(recipe, records: list[MetricRecord], manifest: dict) -> list[CheckResult]:
    """Steps 1..N each once, then the run against its committed reference (same env lock: the same curve)."""
    from repro.twin import upstream_ref as reference  # lazy: a later stage or a heavy import, only when this runs

    steps = [r.step for r in records]
    ok = bool(steps) and steps == list(range(1, len(steps) + 1))
    out = [CheckResult("step sequence", PASS if ok else FAIL, len(steps), None, "exact", "the upstream's own log",
                       f"steps 1..{len(steps)}, each once" if ok else f"steps {steps[:8]}...: gaps or repeats")]
    return out + reference.compare(recipe, records, manifest["assets"])


def chart(recipe, records: list[MetricRecord], path: Path) -> Path | None:
    from repro.twin.assets import CACHE_DIR  # lazy: a later stage or a heavy import, only when this runs
    from repro.twin import upstream_ref as reference  # lazy: a later stage or a heavy import, only when this runs

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


def coverage() -> list[dict]:
    """One row per recipe: did its upstream run at twin scale (a committed reference), or why not (derived from
    the environments and twin blocks, never written by hand), its max relative loss difference twin vs upstream
    (the twin's committed golden against the reference, on the same asset keys) and the tolerance with its reason."""
    from repro.catalog import loader as catalog  # lazy: a later stage or a heavy import, only when this runs
    from repro.catalog.upstream_env import env_for  # lazy: a later stage or a heavy import, only when this runs
    from repro.base.errors import ReproError  # lazy: a later stage or a heavy import, only when this runs
    from repro.base.metrics import MetricRecord  # lazy: a later stage or a heavy import, only when this runs
    from repro.twin import golden as goldens  # lazy: a later stage or a heavy import, only when this runs
    from repro.twin import upstream_ref as reference  # lazy: a later stage or a heavy import, only when this runs

    rows = []
    for rid, recipe in sorted(catalog.load_all().items()):
        up = recipe.provenance.upstream
        block = recipe.twin.upstream if recipe.twin else None
        try:  # the environment the run uses: the one the block names, else the pin's CPU one
            env = env_for(up.repo, up.commit, block.env if block else None)
        except ReproError:
            env = None
        ref = reference.load(rid)
        row = {"recipe": rid, "upstream": f"{up.repo}@{up.commit[:7]}", "env": env.name if env else None,
               "ran": ref is not None, "max_rel": None, "tolerance": None, "why": ""}
        band = None
        if block and "loss" in block.tolerance:
            tol = block.tolerance["loss"]
            row["tolerance"] = tol.rtol
            row["why"] = " ".join(tol.why.split())
            if tol.after is not None:  # the declared band: both parts shown, each with its own figure and reason
                band = tol.after
                row["band"] = {"after_step": band.after_step, "rtol": band.rtol, "max_rel": None}
                row["why"] += f"; after step {band.after_step}: " + " ".join(band.why.split())
        if env is None:
            row["why"] = f"no environment under recipes/_upstream/ pins {up.repo}@{up.commit[:7]}"
        elif env.device == "cuda-only":
            row["why"] = f"GPU only: {env.cuda_reason}"
        elif recipe.twin is None:
            row["why"] = "no twin"
        elif block is None:
            row["why"] = "its upstream run at twin scale is not declared yet (no twin.upstream block)"
        elif block.cpu_blocker:
            row["why"] = "cannot train on a CPU: " + " ".join(block.cpu_blocker.split())
        elif ref is None:
            row["why"] = "declared; no reference committed yet: " + row["why"]
        if ref is not None:
            gold = next((g for g in sorted((goldens.GOLDEN_DIR / rid).glob("cpu-*.json"))), None)
            if gold is not None:
                data = json.loads(gold.read_text(encoding="utf-8"))
                if any(data["assets"].get(n) != k for n, k in ref["assets"].items()):
                    row["why"] = "the twin's golden and the reference were made on different asset keys; " + row["why"]
                else:
                    values = data["metrics"].get("loss", {}).get("values", {})
                    recs = [MetricRecord(step=int(s), loss=v) for s, v in values.items()]
                    try:
                        if band is None:
                            row["max_rel"] = reference.max_rel_diff(recs, ref, "loss")
                        else:
                            n = band.after_step
                            row["max_rel"] = reference.max_rel_diff([r for r in recs if r.step <= n], ref, "loss")
                            row["band"]["max_rel"] = reference.max_rel_diff([r for r in recs if r.step > n], ref,
                                                                            "loss")
                    except (KeyError, ReproError):
                        pass
        rows.append(row)
    return rows


def coverage_markdown(rows: list[dict]) -> str:
    lines = ["| recipe | upstream | environment | upstream ran at twin scale | max rel. loss diff | tolerance | "
             "reason / why not |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        diff = f"{r['max_rel']:.2e}" if r["max_rel"] is not None else "-"
        tol = f"{r['tolerance']:.2g}" if r["tolerance"] is not None else "-"
        if r.get("band"):
            b = r["band"]
            after = f"{b['max_rel']:.2e}" if b["max_rel"] is not None else "-"
            diff = f"{diff} to step {b['after_step']}, {after} after"
            tol = f"{tol} to step {b['after_step']}, {b['rtol']:.2g} after"
        lines.append(f"| {r['recipe']} | {r['upstream']} | {r['env'] or '-'} | {'yes' if r['ran'] else 'no'} | "
                     f"{diff} | {tol} | {r['why'].replace('|', '/')} |")
    done = sum(r["ran"] for r in rows)
    lines.append("")
    lines.append(f"{done} of {len(rows)} recipes have a committed upstream reference.")
    return "\n".join(lines)
