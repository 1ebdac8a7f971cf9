"""Golden twin curves (Megatron-LM style): recorded per environment key, compared in two lanes.

expected/golden/<recipe>/<env key>.json holds metric -> {start_step, end_step, step_interval,
values}. A run whose environment key matches a golden file is held to the deterministic lane
(identical to 5 decimals) as well as the approximate one; on any other environment only the
approximate lane (relative tolerance with a budget of failing steps) applies.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from repro import EXPECTED_DIR
from repro.verify.checks import FAIL, NOT_MEASURED, PASS, CheckResult, check_curve
from repro.errors import ReproError
from repro.metrics import MetricRecord

GOLDEN_DIR = EXPECTED_DIR / "golden"

#: metric -> (relative tolerance off the environment it was recorded in, why)
TOLERANCES = {
    "loss": (0.02, "2% covers float32 reduction-order and kernel differences between library versions "
                   "on a 100-step twin; a changed hyperparameter moves the curve by far more"),
    "lr": (1e-6, "the schedule is arithmetic: it must match to float rounding anywhere"),
    "tokens": (0.0, "token counts are integers fixed by the data, template and masking"),
}


def curve(records: list[MetricRecord], metric: str) -> tuple[list[int], list[float]]:
    pairs = [(r.step, getattr(r, metric)) for r in records if r.phase == "train" and getattr(r, metric) is not None]
    return [s for s, _ in pairs], [float(v) for _, v in pairs]


def golden_path(recipe_id: str, key: str, root: Path = GOLDEN_DIR) -> Path:
    return root / recipe_id / f"{key}.json"


def to_golden(records: list[MetricRecord], key: str, provenance: dict) -> dict:
    metrics = {}
    for name in TOLERANCES:
        steps, values = curve(records, name)
        if steps:
            metrics[name] = {"start_step": steps[0], "end_step": steps[-1],
                             "step_interval": steps[1] - steps[0] if len(steps) > 1 else 1,
                             "values": {str(s): v for s, v in zip(steps, values)}}
    bad = [n for n, m in metrics.items() for v in m["values"].values() if not math.isfinite(v)]
    if bad:
        raise ReproError(f"refusing to record golden values with NaN/inf in {', '.join(sorted(set(bad)))}")
    return {"env_key": key, "provenance": provenance, "metrics": metrics}


def record(recipe_id: str, records: list[MetricRecord], key: str, provenance: dict,
           root: Path = GOLDEN_DIR) -> Path:
    if provenance.get("project_tree_dirty", True):
        raise ReproError("refusing to record golden values from a dirty working tree (or outside git): "
                         "commit your changes first, so the golden names the code that made it")
    path = golden_path(recipe_id, key, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_golden(records, key, provenance), indent=1) + "\n", encoding="utf-8")
    return path


def find(recipe_id: str, key: str, root: Path = GOLDEN_DIR) -> dict | None:
    """The golden for this environment, else any golden of the recipe (approximate lane only)."""
    exact = golden_path(recipe_id, key, root)
    if exact.is_file():
        return json.loads(exact.read_text(encoding="utf-8"))
    others = sorted((root / recipe_id).glob("*.json")) if (root / recipe_id).is_dir() else []
    return json.loads(others[0].read_text(encoding="utf-8")) if others else None


def compare(records: list[MetricRecord], golden: dict | None, key: str, source: str) -> list[CheckResult]:
    if golden is None:
        return [CheckResult("golden curve", NOT_MEASURED, None, None, "-", source,
                            "no golden curve is recorded for this recipe ('repro golden record ID')")]
    results = []
    for name, (rtol, why) in TOLERANCES.items():
        if name not in golden["metrics"]:
            continue
        ref = golden["metrics"][name]["values"]
        steps, values = curve(records, name)
        results.append(check_curve(f"{name} vs golden", steps, values, [int(s) for s in ref],
                                   list(ref.values()), rtol=rtol, source=f"{source} ({why})",
                                   env_key=key, ref_env_key=golden["env_key"], budget=0 if rtol == 0 else None))
    expected_steps = golden["metrics"]["loss"]["end_step"]
    got = max((r.step for r in records), default=0)
    results.append(CheckResult("optimizer steps", PASS if got == expected_steps else FAIL, got, expected_steps,
                               "exact", source, f"{got} optimizer steps, golden has {expected_steps}"))
    return results
