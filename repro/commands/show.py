"""repro show: one recipe in full: provenance, published text, runnable command and geometry."""

from __future__ import annotations

import json

from repro.catalog import loader as catalog
from repro.catalog import derive
from repro.plan import rescale
from repro.plan.render import render
from repro.twin.chain import describe

HELP = "show a recipe: provenance, the published text, the pinned runnable command and its geometry"


def add_arguments(p) -> None:
    p.add_argument("id", help="recipe id (repro list)")
    p.add_argument("--json", action="store_true", help="print the validated recipe as JSON")


def run(args) -> int:
    r = catalog.get(args.id)
    if args.json:
        print(json.dumps(r.model_dump(mode="json"), indent=2))
        return 0
    t, b, u = r.topology, r.batch, r.provenance.upstream
    geom = rescale.plan_geometry(r, rescale.Request(t.gpus, t.nodes))
    out = [
        f"{r.id} — {r.title}",
        f"  {r.summary}",
        f"  recipe file: {catalog.recipe_path(r.id).relative_to(catalog.RECIPES_DIR.parent)}",
        f"  upstream: {u.repo}@{u.commit} ({u.doc_path}){'' if u.released else ' [unreleased: ' + (u.ref or '') + ']'}",
        f"  seed: {r.provenance.seed_file}, {r.provenance.section}",
        f"  hardware: {t.nodes} node(s) x {t.gpus_per_node} {t.gpu} ({t.gpus} GPUs) — {t.source}",
        f"  batch: {b.effective} per step = {geom.dp} dp x {b.per_device} per device x {b.grad_accum} accumulation,"
        f" seq {b.seq_len}, loss {b.loss_reduction} (per-device {b.per_device_policy})",
        "  environment: " + ", ".join(f"{k}=={v}" if v else f"{k} (unpinned)" for k, v in r.environment.packages.items()),
    ]
    d = derive.derive(r)
    if d:
        out.append("  derived: " + ", ".join(f"{k}={v}" for k, v in d.items()))
    out.extend("  " + ln for ln in describe(r))
    if r.twin:
        out.extend(twin_lines(r))
    out.append("  published text:")
    for block in r.published.blocks:
        out.extend(f"    {block.line + i:4d}| {ln}" for i, ln in enumerate(block.text.split("\n")))
    out.append("  runnable command (published topology):")
    out.extend("    " + ln for ln in render(r, geom).nodes[0].shell.split("\n"))
    for dev in r.command.deviations:
        out.append(f"  deviation {dev.flag or ''}: {dev.what} — {dev.why}".replace("  deviation :", "  deviation:"))
    out.extend(f"  note: {n}" for n in r.notes)
    print("\n".join(out))
    return 0


def twin_lines(r) -> list[str]:
    """What the twin will actually build and run: assets with their builder and values, geometry, checks."""
    tw = r.twin
    g = tw.geometry
    lines = [f"  twin: {tw.runner}, {g.processes} processes x {g.per_device} per device x {g.grad_accum} "
             f"accumulation = {g.effective} per step (published {r.batch.effective})"]
    for name, a in tw.assets.items():
        params = ", ".join(f"{k}={v}" for k, v in a.params.items() if k != "config")
        if "config" in a.params:
            params += (", " if params else "") + "config: " + ", ".join(f"{k}={v}" for k, v in a.params["config"].items())
        stands = f" for {', '.join(a.stands_for)}" if a.stands_for else ""
        lines.append(f"    asset {name} ({a.kind}{stands}): {a.builder}({params})")
    for o in tw.overrides:
        lines.append(f"    override {o.flag} {' '.join(o.values)}")
    for e in tw.config_effects:
        lines.append(f"    config effect (CPU path): {e.flag} <- {e.config} {e.key} — {e.why}")
    for c in tw.checks:
        bound = "" if c.value is None else f" {c.value:g}" + (f" ± {c.tol:g}" if c.tol else "")
        lines.append(f"    check {c.kind} {c.metric}{' @ step ' + str(c.step) if c.step else ''}{bound} — {c.why}")
    for m, spec in tw.golden.items():
        lines.append(f"    golden {m}: rtol {spec.rtol:g} — {spec.why}")
    if tw.equivalence:
        eq = tw.equivalence
        lines.append(f"    equivalence ({eq.metric}): {', '.join(x.name for x in eq.layouts)}; negative control "
                     f"{(eq.negative_control.geometry or eq.layouts[0]).name}"
                     f"{' with ' + ' '.join(a.flag + ' ' + ' '.join(a.values) for a in eq.negative_control.set) if eq.negative_control.set else ''}"
                     f" — {eq.negative_control.why}")
    lines.append(f"    proves: {'; '.join(tw.proves)}")
    return lines

