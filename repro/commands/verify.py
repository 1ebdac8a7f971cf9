"""`repro verify ID LOG...`: a finished run's logs against the claims published for a recipe.

Per claim: measured, expected, tolerance, source and PASS / FAIL / NOT-MEASURED. Exit codes:
0 every measured verdict claim passed; 1 one failed; 2 bad input (unknown id or GPU, unreadable
logs) or logs that speak to none of the verdict claims (NOT-MEASURED is never a pass).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from repro.verify.claims import expected_path, load_expected
from repro.base.errors import EXIT_BAD_INPUT, ReproError
from repro.inputs import readable_input, regular_file
from repro.verify.hardware import CPU, is_cpu, known_keys, normalize_gpu, require_gpu
from repro.base.metrics import json_safe
from repro.output import table
from repro.report.verification import write_report
from repro.verify.verifier import ReferenceCurve, exit_code, verify
from repro.catalog import loader as catalog
from repro.verify import parsers
from repro.base.metrics import read_jsonl

HELP = ("check a finished run's logs against the published claims of a recipe: measured vs expected, "
        "tolerance and source per claim; exit 0 pass, 1 fail, 2 bad input or nothing measurable")

#: Metadata keys under which a parser may report the run's GPU (best effort; --hardware wins).
_GPU_METADATA_KEYS = ("gpu", "gpu_name", "device_name", "hardware")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", metavar="ID", help="recipe id (see 'repro list')")
    p.add_argument("logs", metavar="LOG", nargs="+",
                   help="training log file(s) of the run, in the order written (a directory means its "
                        "TensorBoard event files); with --seeds each LOG is a separate run")
    p.add_argument("--format", dest="fmt", default=None,
                   help="log format (default: detected from each file's content; see 'repro parse --help')")
    p.add_argument("--seeds", action="store_true",
                   help="each LOG is a separate run (e.g. one per seed); loss claims then use a TOST "
                        "equivalence test across runs instead of one number against one number")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--report", metavar="DIR", type=Path, default=None,
                   help="write report.md and a self-contained report.html (charts inline) into DIR")
    p.add_argument("--hardware", metavar="GPU", default=None,
                   help=f"the run's GPU, e.g. H100-SXM or 'NVIDIA H100 80GB HBM3' (known: {', '.join(known_keys())}); "
                        "a claim measured on another GPU is then checked through MFU, with a warning; 'cpu': rates are "
                        "not comparable (a log inside a twin run folder is recognised from its manifest)")
    p.add_argument("--env-key", default=None,
                   help="name of the run's software environment; the loss curve is compared exactly (to 5 "
                        "decimals) when it equals the reference's key, approximately otherwise")
    p.add_argument("--reference", metavar="JSONL", type=Path, default=None,
                   help="a reference loss curve in repro's metrics.jsonl format to compare the run's curve with")
    p.add_argument("--reference-env-key", default=None, help="environment key the reference was produced in")


def run(args: argparse.Namespace) -> int:
    catalog.get(args.recipe)  # an unknown (or unloadable) recipe is reported as that, with suggestions
    if not expected_path(args.recipe).is_file():
        raise ReproError(f"expected/{args.recipe}.yaml: no expected file for recipe '{args.recipe}', so there are "
                         "no published claims to verify against")
    load_expected(args.recipe)  # a broken expected file is bad input too, reported before parsing
    for log in args.logs:
        readable_input(log, "LOG")
        refuse_twin_run(Path(log), args.recipe)
    if args.reference is not None:
        regular_file(args.reference, "--reference")
    hardware = _hardware(args.hardware)

    groups = [[log] for log in args.logs] if args.seeds else [list(args.logs)]
    records_by_run, values_by_run, notes = [], [], []
    for group in groups:
        records, values, detected_gpu, issues_note = _parse(group, args.fmt)
        records_by_run.append(records)
        values_by_run.append(values)
        hardware = hardware or detected_gpu or _twin_hardware(group)
        if issues_note:
            notes.append(issues_note)

    reference = None
    if args.reference is not None:
        reference = _reference(args.reference, args.reference_env_key, ReferenceCurve)

    result = verify(args.recipe, records_by_run, hardware=hardware, env_key=args.env_key,
                    reference=reference, run_values=values_by_run)
    result.warnings.extend(notes)
    code = exit_code(result)

    if args.json:
        print(json.dumps(json_safe(result.to_json()), indent=1))
    else:
        _print(result, code)
    if args.report is not None:
        md, html = write_report(result, args.report)
        print(f"report: {md} and {html}", file=sys.stderr)
    if code == EXIT_BAD_INPUT:
        print(f"repro: error: the logs speak to none of the verdict claims of '{args.recipe}' "
              f"(everything NOT-MEASURED); check the recipe id and the files with 'repro parse LOG'",
              file=sys.stderr)
    return code


#: How far above a log to look for the manifest of the run that wrote it (OUT/train/<name>/metrics.jsonl).
_MANIFEST_DEPTH = 3


def twin_manifest(log: Path) -> tuple[Path, dict] | None:
    """The manifest.json of the twin run a log belongs to (beside it or up to three folders above)."""
    folder = log.resolve() if log.is_dir() else log.resolve().parent
    for candidate in [folder, *folder.parents][:_MANIFEST_DEPTH + 1]:
        path = candidate / "manifest.json"
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            return (path, data) if isinstance(data, dict) and data.get("scale") == "twin" else None
    return None


def refuse_twin_run(log: Path, recipe_id: str) -> None:
    """A twin is a tiny model on tiny data: the published run's numbers say nothing about it.
    Its own checks (the twin block's checks and its golden curve) are in its verdict.json."""
    found = twin_manifest(log)
    if found is None:
        return
    manifest_path, manifest = found
    out = manifest_path.parent
    of = manifest.get("recipe", recipe_id)
    raise ReproError(
        f"{log}: this is a scaled-down twin run of {of} ({manifest_path} says scale: twin); the published claims "
        f"of {recipe_id} describe the full-scale run and do not apply to a twin. The twin's verdict against its "
        f"own checks and golden curve (expected/golden/{of}/) is {out / 'verdict.json'} (report: "
        f"{out / 'report.md'}); rerun it with 'repro run {of} --scale twin --out {out}'")


def _hardware(name: str | None) -> str | None:
    if name is None:
        return None
    if is_cpu(name):
        return CPU
    try:
        return require_gpu(name)
    except ValueError as exc:
        raise ReproError(f"--hardware: {exc} (or 'cpu')") from None


def _twin_hardware(paths: list[str]) -> str | None:
    """A log inside a twin run folder (an ancestor holds the twin's manifest.json) ran on that manifest's
    device: CPU twins make their rates not comparable with any published GPU figure."""
    for path in paths:
        for folder in Path(path).resolve().parents:
            manifest = folder / "manifest.json"
            if manifest.is_file():
                try:
                    data = json.loads(manifest.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    return None
                if data.get("scale") != "twin":
                    return None
                device = str((data.get("hardware") or {}).get("device", ""))
                return CPU if is_cpu(device) else normalize_gpu(device)
    return None


def _parse(paths: list[str], fmt: str | None) -> tuple[list, dict[str, float], str | None, str | None]:
    """Records, run-level values, a GPU name if the log states one, and a note on parse issues."""
    for path in paths:
        readable_input(path, "LOG")
    parsed = parsers.parse_files(paths, fmt)
    values = run_level_values(parsed.metadata)
    gpu = None
    for key in _GPU_METADATA_KEYS:
        value = parsed.metadata.get(key)
        if isinstance(value, str) and normalize_gpu(value):
            gpu = normalize_gpu(value)
            break
    note = None
    if parsed.issues:
        kinds = sorted({getattr(i, "kind", "issue") for i in parsed.issues})
        note = (f"{', '.join(paths)}: {len(parsed.issues)} parse issue(s) ({', '.join(kinds)}); "
                f"see 'repro parse {' '.join(paths)}'")
    return parsed.records, values, gpu, note


def run_level_values(metadata: dict[str, Any]) -> dict[str, float]:
    """Numbers a log states once per run (HF's trainer summary, MLPerf's global_batch_size, ...).

    Top-level numbers first, then the numbers of nested sections (``trainer_summary`` before
    ``trainer_state``) under their own names; the first occurrence of a name wins.
    """
    out: dict[str, float] = {}

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    for key, value in metadata.items():
        if number(value):
            out.setdefault(key, float(value))
    sections = sorted((k for k, v in metadata.items() if isinstance(v, dict)),
                      key=lambda k: (k != "trainer_summary", k))
    for section in sections:
        for key, value in metadata[section].items():
            if number(value):
                out.setdefault(key, float(value))
    return out


def _reference(path: Path, env_key: str | None, factory):
    if not path.is_file():
        raise ReproError(f"--reference: {path}: no such file")
    try:
        points = [(r.step, r.loss) for r in read_jsonl(path) if r.phase == "train" and r.loss is not None]
    except (ValueError, KeyError, TypeError) as exc:
        raise ReproError(f"--reference: {path}: not a repro metrics.jsonl ({exc})") from None
    if not points:
        raise ReproError(f"--reference: {path}: no training loss in the file")
    return factory(steps=[s for s, _ in points], values=[v for _, v in points], source=str(path), env_key=env_key)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.4g}"
    return f"{value:.6g}"


def _print(result, code: int) -> None:
    hw = result.hardware or "unknown (pass --hardware)"
    print(f"repro verify {result.recipe}: {result.n_runs} run(s), hardware {hw}")
    rows = []
    for r in result.results:
        rows.append({
            "status": r.status + ("" if r.used_by_verdict else " (info)"),
            "claim": r.claim_id,
            "measured": _fmt(r.check.measured),
            "expected": _fmt(r.check.expected),
            "units": r.units,
            "tolerance": r.check.tolerance,
        })
    table(rows, ["status", "claim", "measured", "expected", "units", "tolerance"])
    print()
    for r in result.results:
        flags = [f for f, on in (("secondary", r.secondary), ("not in verdict", not r.used_by_verdict)) if on]
        flag_text = f" [{', '.join(flags)}]" if flags else ""
        print(f"- {r.claim_id}{flag_text}: {r.check.message}")
        print(f"    source: {r.check.source}")
        if r.conflicts_with:
            print(f"    conflicts with: {', '.join(r.conflicts_with)}")
        for warning in r.check.warnings:
            print(f"    warning: {warning}")
    for warning in result.warnings:
        print(f"warning: {warning}")
    counts = result.counts()
    print(f"verdict: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['NOT-MEASURED']} NOT-MEASURED "
          f"(NOT-MEASURED is never a pass); exit {code}")


