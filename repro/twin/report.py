"""A twin run's human report: report.md and loss_curve.png beside its verdict.json."""

from __future__ import annotations

import os
from pathlib import Path

from repro.twin.golden import curve
from repro.base.paths import CACHE_DIR
from repro.twin.runner import TwinResult, write_json
from repro.twin.verdict import verdict
from repro.base.curves import FAIL, NOT_MEASURED, PASS, CheckResult


def loss_chart(run: TwinResult, golden: dict | None, path: Path) -> Path | None:
    os.environ.setdefault("MPLCONFIGDIR", str(CACHE_DIR / "matplotlib"))  # its font cache, not $HOME
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    steps, losses = curve(list(run.records), "loss")
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    ax.plot(steps, losses, marker="o", ms=3, label=f"this run ({run.recipe.id})")
    if golden and "loss" in golden["metrics"]:
        ref = golden["metrics"]["loss"]["values"]
        ax.plot([int(s) for s in ref], list(ref.values()), ls="--", color="gray",
                label=f"golden ({golden['env_key']})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"train_loss ({run.recipe.batch.loss_reduction})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def report_markdown(run: TwinResult, result: dict, manifest: dict, chart: Path | None) -> str:
    twin, plan = run.recipe.twin, manifest["plan"]
    mark = {PASS: "PASS", FAIL: "FAIL", NOT_MEASURED: "NOT-MEASURED"}
    lines = [
        f"# {run.recipe.id} — twin run: {'PASSED' if result['passed'] else 'FAILED'}",
        "",
        f"{run.recipe.title}. This ran the recipe's **scaled-down twin**, not the published run; "
        f"the full run needs {run.recipe.topology.gpus} x {run.recipe.topology.gpu} "
        f"(`repro plan {run.recipe.id} --gpus N`).",
        "",
        "## Checks",
        "",
        "| check | status | measured | expected | tolerance | message |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in result["checks"]:
        lines.append(f"| {c['name']} | {mark[c['status']]} | {c['measured']} | {c['expected']} | "
                     f"{c['tolerance']} | {c['message'].replace('|', '/')} |")
    lines += ["", f"![loss curve]({chart.name})" if chart else "(matplotlib missing: no chart)", "",
              "## Plan", "",
              f"- processes x per-device x accumulation = {plan['processes']} x {plan['per_device_batch']} x "
              f"{plan['grad_accum']} = {plan['effective_batch']} sequences per step "
              f"(published: {plan['published_effective_batch']})",
              f"- environment key: `{manifest['env_key']}`; wall time {manifest['wall_s']} s; "
              f"project {manifest['project_git_sha'] or 'not in git'}"
              + (" (dirty tree)" if manifest["project_tree_dirty"] else ""),
              f"- user overrides (--set): {', '.join(o['flag'] + ' ' + ' '.join(o['values']) for o in manifest['overrides']) or 'none'}",
              "", "```", manifest["command"], "```", "",
              "## What this twin is", ""]
    for title, items in (("Shrunk", twin.shrunk), ("Kept", twin.kept), ("It can prove", twin.proves),
                         ("It cannot prove", twin.cannot_prove)):
        lines.append(f"**{title}:**")
        lines += [f"- {x}" for x in items]
        lines.append("")
    return "\n".join(lines)


def write_outputs(run: TwinResult, checks: list[CheckResult], manifest: dict, golden: dict | None) -> dict:
    result = verdict(run, checks)
    write_json(run.out_dir / "verdict.json", result)
    chart = loss_chart(run, golden, run.out_dir / "loss_curve.png")
    (run.out_dir / "report.md").write_text(report_markdown(run, result, manifest, chart), encoding="utf-8")
    return result


def mutants_markdown(result: dict) -> str:
    """The matrix as a markdown table: one row per mutant, one column per check (X killed, . survived)."""
    ids = result["checks"]
    mark = {"killed": "X", "survived": ".", "not measured": "?"}
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
