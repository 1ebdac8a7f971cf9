"""Golden twin curves (Megatron-LM style): recorded per environment key, compared in two lanes.

expected/golden/<recipe>/<env key>.json holds metric -> {start_step, end_step, step_interval, values},
the content keys of the assets the run used, and provenance. The metrics stored and their tolerances
come from the twin block (`golden:`). A run whose environment key matches is held to the deterministic
lane (identical to 5 decimals) as well as the approximate one; elsewhere only the approximate lane
applies. A golden whose assets differ from the run's is stale: reported, never compared.

Goldens live in device lanes: every CPU golden is one lane ("cpu"), and each GPU model is a lane of its
own (the device part of the key, "NVIDIA-H200"). A run falls back only to a golden of its own lane, so a
CPU golden is never compared against a GPU run (fp32 on CPU vs bf16 kernels on a GPU) nor one GPU's
against another's; a GPU run with no golden of its device reports NOT-MEASURED and says why.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from repro.base.paths import EXPECTED_DIR
from repro.catalog.schema import GoldenMetric
from repro.base.errors import ReproError
from repro.base.metrics import MetricRecord
from repro.twin.checks import series
from repro.base.device import is_cpu
from repro.base.curves import FAIL, NOT_MEASURED, PASS, CheckResult, check_curve

GOLDEN_DIR = EXPECTED_DIR / "golden"


def curve(records: list[MetricRecord], metric: str) -> tuple[list[int], list[float]]:
    return series(records, metric)


def golden_path(recipe_id: str, key: str, root: Path = GOLDEN_DIR) -> Path:
    return root / recipe_id / f"{key}.json"


def to_golden(records: list[MetricRecord], metrics: dict[str, GoldenMetric], key: str, assets: dict[str, str],
              provenance: dict) -> dict:
    out = {}
    for name in metrics:
        steps, values = curve(records, name)
        if steps:
            out[name] = {"start_step": steps[0], "end_step": steps[-1],
                         "step_interval": steps[1] - steps[0] if len(steps) > 1 else 1,
                         "values": {str(s): v for s, v in zip(steps, values)}}
    missing = [n for n in metrics if n not in out]
    if missing:
        raise ReproError(f"refusing to record a golden: the run logged no {', '.join(missing)}")
    bad = [n for n, m in out.items() for v in m["values"].values() if not math.isfinite(v)]
    if bad:
        raise ReproError(f"refusing to record golden values with NaN/inf in {', '.join(sorted(set(bad)))}")
    return {"env_key": key, "assets": dict(sorted(assets.items())), "provenance": provenance, "metrics": out}


def record(recipe_id: str, records: list[MetricRecord], metrics: dict[str, GoldenMetric], key: str,
           assets: dict[str, str], provenance: dict, root: Path = GOLDEN_DIR) -> Path:
    if provenance.get("project_tree_dirty", True):
        raise ReproError("refusing to record golden values from a dirty working tree (or outside git): "
                         "commit your changes first, so the golden names the code that made it")
    path = golden_path(recipe_id, key, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = to_golden(records, metrics, key, assets, provenance)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path


#: runner.env_key() is "<device>_torch-<v>_transformers-<v>_accelerate-<v>"
_KEY_DEVICE_END = "_torch-"
CPU_LANE = "cpu"


def device_lane(key: str) -> str:
    """The golden lane of an environment key: "cpu" for every CPU (and for keys that name no device,
    e.g. synthetic test keys), else the GPU's device name as runner.device_name() spells it."""
    device, sep, _ = key.partition(_KEY_DEVICE_END)
    return CPU_LANE if not sep or not device or is_cpu(device) else device


def find(recipe_id: str, key: str, root: Path = GOLDEN_DIR) -> dict | None:
    """The golden for this environment, else a golden of the same device lane (approximate lane only);
    never one of another lane (a CPU golden for a GPU run, or one GPU's for another)."""
    exact = golden_path(recipe_id, key, root)
    if exact.is_file():
        return json.loads(exact.read_text(encoding="utf-8"))
    lane = device_lane(key)
    others = sorted(p for p in (root / recipe_id).glob("*.json") if device_lane(p.stem) == lane) \
        if (root / recipe_id).is_dir() else []
    return json.loads(others[0].read_text(encoding="utf-8")) if others else None


def find_any(recipe_id: str, root: Path = GOLDEN_DIR) -> dict | None:
    """Any golden of the recipe, whatever its lane (for the step count of a progress bar, never to compare)."""
    others = sorted((root / recipe_id).glob("*.json")) if (root / recipe_id).is_dir() else []
    return json.loads(others[0].read_text(encoding="utf-8")) if others else None


def missing_reason(key: str) -> str:
    lane = device_lane(key)
    if lane == CPU_LANE:
        return "no golden curve is recorded for this recipe ('repro golden record ID')"
    return (f"no golden curve is recorded for this GPU ({lane}); CPU goldens and other devices' goldens are "
            "never compared against a GPU run (record one on this GPU: 'repro golden record ID')")


def stale_assets(golden: dict, assets: dict[str, str]) -> list[str]:
    """Asset names whose content key differs between the golden and the run (or that one side lacks)."""
    recorded = golden.get("assets")
    if recorded is None:
        return sorted(assets) or ["(the golden records no asset keys)"]
    return sorted(n for n in set(recorded) | set(assets) if recorded.get(n) != assets.get(n))


def compare(records: list[MetricRecord], golden: dict | None, metrics: dict[str, GoldenMetric], key: str,
            assets: dict[str, str], source: str, deterministic: bool = True) -> list[CheckResult]:
    """The run's curves against the golden; deterministic=False keeps only the approximate lane (a run at
    another declared layout than the golden's, `repro run --geometry`)."""
    if golden is None:
        return [CheckResult("golden curve", NOT_MEASURED, None, None, "-", source, missing_reason(key))]
    if device_lane(golden.get("env_key", "")) != device_lane(key):
        return [CheckResult("golden curve", NOT_MEASURED, None, None, "-", source,
                            f"the golden was recorded in the {device_lane(golden.get('env_key', ''))} lane and this "
                            f"run is in the {device_lane(key)} lane: goldens are never compared across devices; "
                            + missing_reason(key))]
    stale = stale_assets(golden, assets)
    if stale:
        return [CheckResult("golden curve", NOT_MEASURED, None, None, "-", source,
                            f"stale golden: asset(s) {', '.join(stale)} changed since it was recorded; "
                            "not compared ('repro golden record ID' on a clean tree)")]
    results = []
    for name, spec in metrics.items():
        if name not in golden["metrics"]:
            results.append(CheckResult(f"{name} vs golden", NOT_MEASURED, None, None, "-", source,
                                       f"the golden has no {name} curve; re-record it"))
            continue
        ref = golden["metrics"][name]["values"]
        steps, values = curve(records, name)
        results.append(check_curve(f"{name} vs golden", steps, values, [int(s) for s in ref],
                                   list(ref.values()), rtol=spec.rtol, source=f"{source} ({spec.why})",
                                   env_key=key if deterministic else None, ref_env_key=golden["env_key"],
                                   budget=0 if spec.rtol == 0 else None))
    expected_steps = max(m["end_step"] for m in golden["metrics"].values())
    got = max((r.step for r in records), default=0)
    results.append(CheckResult("optimizer steps", PASS if got == expected_steps else FAIL, got, expected_steps,
                               "exact", source, f"{got} optimizer steps, golden has {expected_steps}"))
    return results
