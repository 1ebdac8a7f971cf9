"""Upstream references: the real upstream's curve at twin scale (expected/upstream/<id>/cpu.json), recorded with its
provenance, and the check that holds the twin to it within a measured tolerance per metric.

Why beside the golden: a golden proves the twin did not change; this proves the twin computes what the pinned
upstream computes on the same assets and flags. A reference recorded on other asset keys is stale: NOT-MEASURED."""

from __future__ import annotations

import json
import math
from pathlib import Path

from repro.base.paths import EXPECTED_DIR
from repro.catalog.schema import Recipe
from repro.base.errors import ReproError
from repro.base.metrics import MetricRecord
from repro.twin.checks import series
from repro.base.curves import FAIL, NOT_MEASURED, PASS, CheckResult, check_curve

REF_DIR = EXPECTED_DIR / "upstream"
LANE = "cpu"


def path(recipe_id: str, root: Path = REF_DIR) -> Path:
    return root / recipe_id / f"{LANE}.json"


def load(recipe_id: str, root: Path = REF_DIR) -> dict | None:
    p = path(recipe_id, root)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReproError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno}); re-record it with "
                         f"repro golden record {recipe_id} --from-upstream") from None


def to_reference(recipe: Recipe, records: list[MetricRecord], manifest: dict, repro_sha: str) -> dict:
    metrics = recipe.twin.upstream.tolerance if recipe.twin and recipe.twin.upstream else {}
    if not metrics:
        raise ReproError(f"{recipe.id}: twin.upstream.tolerance names no metric to record (e.g. loss, with its rtol "
                         "and the measured reason)")
    out = {}
    for name in metrics:
        steps, values = series(records, name)
        if not steps:
            raise ReproError(f"{recipe.id}: the upstream run logged no {name}; it cannot be a reference metric")
        if not all(math.isfinite(v) for v in values):
            raise ReproError(f"{recipe.id}: the upstream's {name} has NaN/inf; not recorded")
        out[name] = {"values": {str(s): v for s, v in zip(steps, values)}}
    provenance = {
        "upstream": manifest["upstream"], "environment": {k: manifest["environment"][k]
                                                          for k in ("name", "lock_sha256", "exclude_newer")},
        "cpu_changes": manifest["cpu_changes"], "command": manifest["command"], "plan": manifest["plan"],
        "repro_commit": repro_sha, "wall_s": manifest["wall_s"],
    }
    if manifest.get("upstreams"):  # a chained stage: the twin stage (and its cache key) the upstream started from
        provenance["started_from"] = [{k: u[k] for k in ("stage", "key", "flag", "input") if k in u}
                                      for u in manifest["upstreams"]]
    return {"recipe": recipe.id, "lane": LANE, "assets": dict(sorted(manifest["assets"].items())),
            "provenance": provenance, "metrics": out}


def record(recipe: Recipe, records: list[MetricRecord], manifest: dict, repro_sha: str,
           root: Path = REF_DIR) -> Path:
    data = to_reference(recipe, records, manifest, repro_sha)
    p = path(recipe.id, root)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return p


def compare(recipe: Recipe, records: list[MetricRecord], assets: dict[str, str], root: Path = REF_DIR,
            ref: dict | None = None) -> list[CheckResult]:
    """The twin's curves against the upstream reference; [] when the recipe has none (nothing to hold it to)."""
    ref = ref if ref is not None else load(recipe.id, root)
    if ref is None or recipe.twin is None or recipe.twin.upstream is None:
        return []
    source = f"expected/upstream/{recipe.id}/{LANE}.json"
    stale = sorted(n for n, k in ref["assets"].items() if assets.get(n) != k)
    if stale:
        return [CheckResult("upstream reference", NOT_MEASURED, None, None, "-", source,
                            f"stale upstream reference: asset(s) {', '.join(stale)} changed since it was recorded; "
                            f"not compared (repro golden record {recipe.id} --from-upstream)")]
    results = []
    for name, tol in recipe.twin.upstream.tolerance.items():
        if name not in ref["metrics"]:
            results.append(CheckResult(f"{name} vs upstream", NOT_MEASURED, None, None, "-", source,
                                       f"the upstream reference has no {name} curve; re-record it"))
            continue
        values = ref["metrics"][name]["values"]
        steps, got = series(records, name)
        results.append(check_metric(f"{name} vs upstream", steps, got, [int(s) + tol.offset for s in values],
                                    list(values.values()), tol, source))
    want = max(int(s) for m in ref["metrics"].values() for s in m["values"])
    got_steps = max((r.step for r in records if r.phase == "train"), default=0)
    results.append(CheckResult("steps vs upstream", PASS if got_steps == want else FAIL, got_steps, want, "exact",
                               source, f"{got_steps} optimizer steps, the upstream ran {want}"))
    return results


def check_metric(name: str, steps, got, ref_steps, ref_values, tol, source: str) -> CheckResult:
    """One metric against the reference: tol.rtol on every step, or on steps 1..tol.after.after_step with the
    declared band after it; both parts must pass (one result, so the mutant matrix keeps one column)."""
    why = f"{source} ({tol.why})" + (f"; offset {tol.offset}: {tol.offset_why}" if tol.offset else "")
    if tol.after is None:
        return check_curve(name, steps, got, ref_steps, ref_values, rtol=tol.rtol, source=why, budget=0)
    n = tol.after.after_step

    def part(keep, rtol: float) -> CheckResult:
        run = [(s, v) for s, v in zip(steps, got) if keep(s)]
        ref = [(s, v) for s, v in zip(ref_steps, ref_values) if keep(s)]
        return check_curve(name, [s for s, _ in run], [v for _, v in run], [s for s, _ in ref], [v for _, v in ref],
                           rtol=rtol, source=why, budget=0)

    strict, band = part(lambda s: s <= n, tol.rtol), part(lambda s: s > n, tol.after.rtol)
    parts = [(f"steps 1..{n}", strict), (f"steps after {n} (declared band: {tol.after.why})", band)]
    status = FAIL if FAIL in (strict.status, band.status) else (PASS if strict.status == band.status == PASS
                                                                 else NOT_MEASURED)
    tol_text = f"rtol {tol.rtol:g} to step {n}, {tol.after.rtol:g} after"
    message = "; ".join(f"{label}: {r.message}" for label, r in parts)
    details = {"strict": strict.details, "band": band.details}
    return CheckResult(name, status, band.measured, band.expected, tol_text, why, message, details=details)


def max_rel_diff(records: list[MetricRecord], ref: dict, metric: str) -> float | None:
    """max |twin - upstream| / |upstream| over the common steps (the README table's figure)."""
    values = ref["metrics"].get(metric, {}).get("values", {})
    steps, got = series(records, metric)
    diffs = [abs(v - values[str(s)]) / abs(values[str(s)]) for s, v in zip(steps, got)
             if str(s) in values and values[str(s)] != 0]
    return max(diffs) if diffs else None
