"""The single-GPU CI lane (`repro gpu-ci`, `nox -s gpu-ci`, tools/gpu-check.sh): what it runs, and the
figures it reads back from each twin's folder. Pure functions over recipes, manifests and metric
records, so all of it is tested on a CPU with synthetic runs; repro/commands/gpu_ci.py does the I/O.

Each twin runs as the CPU lane runs it (`repro run ID --scale twin`): on a GPU the twin command takes
its GPU overlay (bf16, the recipe's DeepSpeed/accelerate configs). A GPU twin needs one GPU per rank, so
where the twin block's geometry needs more GPUs than there are, the lane runs the first layout of the
same effective batch that its equivalence block declares and fits (`--geometry`; its golden check is
then approximate only), and skips the twin, with the reason, where there is none. Per twin it reports:

* a lane verdict: PASS; NO-GOLDEN (every check passed except the golden curve, because no golden is
  recorded for this GPU: CPU goldens are never compared with a GPU run); FAIL; NOT-MEASURED (a check
  other than the golden could not be measured); ERROR (no verdict: the run crashed); TIMEOUT; NOT-RUN
  (the lane's time budget ran out first); SKIP (cannot run on this many GPUs, with the reason).
  FAIL, NOT-MEASURED, ERROR, TIMEOUT and NOT-RUN fail the lane.
* tokens/s: the twin's own metrics (``tokens`` per step over ``step_time_s``, the first step left out
  as warm-up when there are three or more), all devices and per device.
* MFU: tokens/s per device x FLOPs per token (repro/verify/flops.py, torchtitan's dense form, of the
  twin's model as its config.json says) / the GPU's dense BF16 peak (repro/verify/hardware.py). At twin
  scale (hidden 64) this is tiny and says how busy the GPU was, not what the published run reached.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable

from repro.catalog.schema import Recipe
from repro.base.metrics import MetricRecord
from repro.verify.checks import FAIL, NOT_MEASURED, PASS
from repro.verify.flops import Architecture
from repro.base.errors import ReproError
from repro.verify import hardware
from repro.verify.flops import dense_flops_per_token

PASSED = "PASS"
NO_GOLDEN = "NO-GOLDEN"
FAILED = "FAIL"
UNMEASURED = "NOT-MEASURED"
ERROR = "ERROR"
TIMEOUT = "TIMEOUT"
NOT_RUN = "NOT-RUN"
SKIP = "SKIP"
#: lane verdicts that make the lane (and tools/gpu-check.sh) exit non-zero
FAILING = (FAILED, UNMEASURED, ERROR, TIMEOUT, NOT_RUN)

#: optional GPU packages: distribution name -> what the twins do with it
OPTIONAL = {
    "flash-attn": ("flash_attn", "twins whose recipe passes --use_flash_attn run flash_attention_2",
                   "those twins use sdpa instead (harness/runtime/models.py)"),
    "vllm": ("vllm", "installed, but no twin uses it: the RLVR twins generate with the policy's own generate()",
             "the RLVR twins generate with the policy's own generate(); vLLM is not needed by any twin"),
}


# ---------------------------------------------------------------------------------------------
# what the lane runs


@dataclass(frozen=True)
class Planned:
    id: str
    argv: list[str]
    out_dir: Path
    log: Path
    processes: int
    skip: str | None = None  # why it does not run here; None: it runs
    kernels: tuple[str, ...] = ()  # optional packages the recipe asks for ("flash-attn", "vllm")
    layout: str | None = None  # an equivalence layout run instead of the twin block's geometry (fewer ranks)


def installed_optional(version: Callable[[str], str] = metadata.version) -> dict[str, str | None]:
    """Distribution name -> installed version, or None."""
    out: dict[str, str | None] = {}
    for dist in OPTIONAL:
        try:
            out[dist] = version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def optional_lines(installed: dict[str, str | None]) -> list[str]:
    """One line per optional package: what happens with it, or the clear skip line."""
    lines = []
    for dist, (_, present, absent) in OPTIONAL.items():
        v = installed.get(dist)
        lines.append(f"{dist} {v}: {present}" if v else f"{dist}: not installed, skipped; {absent}")
    return lines


def kernels(recipe: Recipe) -> tuple[str, ...]:
    """Optional GPU packages the published command asks for (by its flags)."""
    flags = [a.flag.lower() for a in recipe.command.args]
    out = []
    if any("flash_attn" in f or "flash-attn" in f for f in flags):
        out.append("flash-attn")
    if any("vllm" in f for f in flags):
        out.append("vllm")
    return tuple(out)


def chain_processes(recipe: Recipe, get: Callable[[str], Recipe]) -> int:
    """The most processes any stage of the twin's chain starts (upstream stages run first)."""
    n = recipe.twin.geometry.processes
    for needs in recipe.needs_list:  # every upstream stage, recursively (RLVR starts from two)
        n = max(n, chain_processes(get(needs.stage), get))
    return n


RANKS = "one GPU per rank (the GPU twin binds rank r to cuda:r and NCCL refuses two ranks on one device)"


def fitting_layout(recipe: Recipe, gpus: int) -> str | None:
    """The first layout the twin's equivalence block declares that fits `gpus` ranks (context parallel
    only where the twin block itself uses it), or None. The suite shows on CPU that those layouts train
    the twin's curve (`repro equivalence ID`)."""
    spec = recipe.twin.equivalence
    for g in (spec.layouts if spec else ()):
        if g.processes <= gpus and g.effective == recipe.twin.geometry.effective:
            return g.name
    return None


def skip_reason(recipe: Recipe, processes: int, gpus: int, upstream_processes: int = 0) -> str | None:
    if upstream_processes > gpus:
        return (f"its upstream stage needs {upstream_processes} GPUs, {RANKS}; this machine has {gpus}")
    if processes <= gpus:
        return None
    return (f"needs {processes} GPUs, {RANKS}; this machine has {gpus}, and its equivalence block declares "
            f"no layout of at most {gpus} process(es)")


def twin_argv(python: str, rid: str, out_dir: Path, layout: str | None = None) -> list[str]:
    """What the CPU lane runs for one twin, with a fresh folder and no progress bar (and the layout, if any)."""
    return [python, "-m", "repro.cli", "run", rid, "--scale", "twin", "--out", str(out_dir), "--fresh", "--quiet",
            *(["--geometry", layout] if layout else [])]


def plan(recipes: dict[str, Recipe], out_root: Path, gpus: int, python: str,
         only: Iterable[str] | None = None) -> list[Planned]:
    """Every recipe with a twin (or the ones `only` names, in catalog order), one folder each under out_root."""
    wanted = set(only) if only else None
    out = []
    for rid in sorted(recipes):
        recipe = recipes[rid]
        if recipe.twin is None or (wanted is not None and rid not in wanted):
            continue
        own = recipe.twin.geometry.processes
        up = max((chain_processes(recipes[n.stage], recipes.__getitem__) for n in recipe.needs_list), default=0)
        layout = fitting_layout(recipe, gpus) if own > gpus else None
        n = recipes_layout_processes(recipe, layout) if layout else own
        d = out_root / rid
        out.append(Planned(rid, twin_argv(python, rid, d, layout), d, out_root / f"{rid}.log", max(n, up),
                           skip_reason(recipe, n, gpus, up), kernels(recipe), layout))
    return out


def recipes_layout_processes(recipe: Recipe, name: str) -> int:
    return next(g.processes for g in recipe.twin.equivalence.layouts if g.name == name)


# ---------------------------------------------------------------------------------------------
# figures read back from a finished twin


@dataclass(frozen=True)
class Throughput:
    tokens_per_s: float | None  # all devices
    tokens_per_s_per_device: float | None
    steps: int  # steps the figure is over
    tokens_per_step: float | None
    reason: str  # how it was measured, or why it was not


def throughput(records: list[MetricRecord], processes: int) -> Throughput:
    """tokens/s from the twin's own per-step ``tokens`` and ``step_time_s`` (rank 0's records)."""
    train = [r for r in records if r.phase == "train" and r.rank in (None, 0)]
    if not train:
        return Throughput(None, None, 0, None, "the twin logged no train step")
    used = train[1:] if len(train) >= 3 else train
    dropped = len(train) - len(used)
    lacking = [r.step for r in used if r.tokens is None or r.step_time_s is None
               or not math.isfinite(r.tokens) or not math.isfinite(r.step_time_s)]
    if lacking:
        missing = "tokens" if any(r.tokens is None for r in used) else "step_time_s"
        return Throughput(None, None, 0, None, f"the twin's metrics have no {missing} at step {lacking[0]}")
    tokens = sum(r.tokens for r in used)
    seconds = sum(r.step_time_s for r in used)
    if seconds <= 0 or tokens <= 0:
        return Throughput(None, None, 0, None, f"{tokens:g} tokens in {seconds:g} s: no rate")
    rate = tokens / seconds
    return Throughput(rate, rate / max(processes, 1), len(used), tokens / len(used),
                      f"{tokens:g} tokens in {seconds:.3f} s over {len(used)} steps"
                      + (" (step 1 left out as warm-up)" if dropped else ""))


def architecture(config: dict, source: str):
    """An Architecture (repro/verify/flops.py) from a twin model's HF config.json, or a reason string."""
    from pydantic import ValidationError


    kind = config.get("model_type")
    if kind not in ("llama", "mistral"):
        return f"no FLOPs mapping for model_type {kind!r} yet (dense llama/mistral only)"
    try:
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        window = config.get("sliding_window")
        return Architecture(
            display=f"twin {kind}", layers=int(config["num_hidden_layers"]), hidden=hidden, heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads), ffn_hidden=int(config["intermediate_size"]),
            gated=config.get("hidden_act", "silu") in ("silu", "swiglu", "gelu_pytorch_tanh"),
            vocab=int(config["vocab_size"]), tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            window=int(window) if window else None, source=source, verified=True)
    except (KeyError, TypeError, ValueError, ValidationError) as exc:
        return f"config.json lacks a usable field ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})"


def model_configs(asset_map: dict, read: Callable[[Path], dict | None]) -> dict[str, dict]:
    """The twin's model assets (by asset name, from OUT/assets.json) that carry an HF config.json."""
    names = set(asset_map.get("keys", {}))
    out = {}
    for name, path in sorted(asset_map.get("models", {}).items()):
        if name in names:
            cfg = read(Path(path) / "config.json")
            if isinstance(cfg, dict) and "model_type" in cfg:
                out[name] = cfg
    return out


def choose_architecture(configs: dict[str, dict]):
    """(Architecture, asset name) when the twin's models share one shape, else (None, reason)."""
    if not configs:
        return None, "the twin's assets carry no model config.json"
    archs = {}
    for name, cfg in configs.items():
        a = architecture(cfg, f"{name}/config.json")
        if isinstance(a, str):
            return None, f"{name}: {a}"
        archs[name] = a
    shapes = {a.model_dump_json(exclude={"source", "display"}) for a in archs.values()}
    if len(shapes) > 1:
        return None, f"the twin trains several model shapes ({', '.join(sorted(archs))}): no single FLOPs figure"
    name = sorted(archs)[0]
    return archs[name], name


@dataclass(frozen=True)
class Utilisation:
    mfu: float | None  # fraction
    flops_per_token: float | None
    peak: float | None
    gpu: str | None
    reason: str


def utilisation(tp: Throughput, arch, sequences_per_step: int | None, device: str | None) -> Utilisation:
    """MFU through the suite's own accounting: dense FLOPs/token x tokens/s/device / dense BF16 peak."""
    if isinstance(arch, str) or arch is None:
        return Utilisation(None, None, None, None, arch or "no architecture")
    if hardware.is_cpu(device):
        return Utilisation(None, None, None, None, f"{device}: a CPU has no GPU peak in the table")
    gpu = hardware.normalize_gpu((device or "").replace("-", " "))
    if gpu is None:
        return Utilisation(None, None, None, None, f"{device!r} has no dense-BF16 peak in repro/verify/hardware.py")
    if tp.tokens_per_s_per_device is None or not sequences_per_step or not tp.tokens_per_step:
        return Utilisation(None, None, None, gpu, f"no tokens/s: {tp.reason}")
    seq = max(1, round(tp.tokens_per_step / sequences_per_step))
    try:
        fpt = dense_flops_per_token(arch, seq)
        peak = hardware.peak_flops(gpu)
    except ReproError as exc:
        return Utilisation(None, None, None, gpu, str(exc))
    return Utilisation(tp.tokens_per_s_per_device * fpt / peak, fpt, peak, gpu,
                       f"{fpt:.4g} FLOP/token (dense, mean sequence {seq} tokens) / {gpu} peak {peak:.4g} FLOP/s")


# ---------------------------------------------------------------------------------------------
# the lane's verdict per twin, and the summary


def lane_verdict(verdict: dict | None, timed_out: bool = False, returncode: int | None = None,
                 last_line: str = "") -> tuple[str, str]:
    """(lane verdict, reason) from the twin's verdict.json (None when it wrote none)."""
    if timed_out:
        return TIMEOUT, "killed at the lane's per-twin time limit"
    if verdict is None:
        return ERROR, f"no verdict.json (exit {returncode})" + (f": {last_line[:200]}" if last_line else "")
    checks = verdict.get("checks") or []
    failed = [c["name"] for c in checks if c.get("status") == FAIL]
    if failed:
        return FAILED, "failed: " + ", ".join(failed)
    unmeasured = [c for c in checks if c.get("status") == NOT_MEASURED]
    golden = [c for c in unmeasured if c["name"] == "golden curve" or c["name"].endswith(" vs golden")]
    other = [c for c in unmeasured if c not in golden]
    if other:
        return UNMEASURED, "not measured: " + "; ".join(f"{c['name']} ({c.get('message', '')})" for c in other)
    if golden:
        return NO_GOLDEN, golden[0].get("message", "no golden for this device")
    if not checks or not all(c.get("status") == PASS for c in checks):
        return ERROR, "the verdict holds no checks"
    return PASSED, f"{len(checks)} checks passed"


@dataclass
class Row:
    id: str
    verdict: str
    reason: str
    wall_s: float | None = None
    tokens_per_s: float | None = None
    tokens_per_s_per_device: float | None = None
    mfu: float | None = None
    throughput_note: str = ""
    mfu_note: str = ""
    out_dir: str = ""
    notes: list[str] = field(default_factory=list)
    train_wall_s: float | None = None  # the training launch alone (manifest.json); wall_s is the whole `repro run`


def row_from_run(p: Planned, verdict: dict | None, manifest: dict | None, records: list[MetricRecord],
                 configs: dict[str, dict], timed_out: bool = False, returncode: int | None = None,
                 last_line: str = "", wall_s: float | None = None, installed: dict | None = None) -> Row:
    v, why = lane_verdict(verdict, timed_out, returncode, last_line)
    plan_ = (manifest or {}).get("plan", {})
    tp = throughput(records, int(plan_.get("processes") or p.processes))
    arch, arch_source = choose_architecture(configs)
    device = (manifest or {}).get("hardware", {}).get("device")
    use = utilisation(tp, arch if arch is not None else arch_source, plan_.get("effective_batch"), device)
    notes = [f"{k}: {'used' if (installed or {}).get(k) else 'asked for, not installed (skipped)'}"
             for k in p.kernels]
    train_wall = (manifest or {}).get("wall_s")
    return Row(p.id, v, why, wall_s if wall_s is not None else train_wall, tp.tokens_per_s,
               tp.tokens_per_s_per_device, use.mfu, tp.reason, use.reason, str(p.out_dir), notes, train_wall)


def failed(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.verdict in FAILING]


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def summary_markdown(rows: list[Row], header: list[str]) -> str:
    lines = ["# GPU lane summary", "", *[f"- {h}" for h in header], "",
             "| id | verdict | wall s | tokens/s | tokens/s/device | MFU | reason |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        mfu = "-" if r.mfu is None else f"{100 * r.mfu:.3g}%"
        lines.append(f"| {r.id} | {r.verdict} | {_fmt(r.wall_s, '.1f')} | {_fmt(r.tokens_per_s, '.0f')} | "
                     f"{_fmt(r.tokens_per_s_per_device, '.0f')} | {mfu} | {r.reason.replace('|', '/')} |")
    bad = failed(rows)
    counts = {}
    for r in rows:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    lines += ["", "Counts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
              f"Lane: {'FAILED (' + ', '.join(r.id for r in bad) + ')' if bad else 'passed'}", ""]
    detail = [f"- {r.id}: tokens/s: {r.throughput_note}; MFU: {r.mfu_note}"
              + (f"; {'; '.join(r.notes)}" if r.notes else "") for r in rows if r.verdict != SKIP]
    if detail:
        lines += ["## How each figure was measured", "", *detail, ""]
    return "\n".join(lines)


def summary_json(rows: list[Row], header: list[str]) -> str:
    return json.dumps({"header": header, "failed": [r.id for r in failed(rows)],
                       "rows": [asdict(r) for r in rows]}, indent=1) + "\n"


def dry_run_text(planned: list[Planned], header: list[str]) -> str:
    """What the lane would run, exactly: id, command, out folder (and what it would skip, and why)."""
    import shlex

    runs = [p for p in planned if p.skip is None]
    lines = [*header, f"would run {len(runs)} of {len(planned)} twins:"]
    for p in planned:
        if p.skip is None:
            lines += [f"RUN  {p.id}", f"     command: {shlex.join(p.argv)}", f"     out: {p.out_dir}",
                      f"     log: {p.log}"]
            if p.layout:
                lines.append(f"     layout: {p.layout} from its equivalence block (same effective batch; the twin "
                             "block's geometry needs more GPUs); its golden check is approximate only")
            lines += [f"     {k}: asked for by the recipe" for k in p.kernels]
        else:
            lines += [f"SKIP {p.id}: {p.skip}", f"     command (not run): {shlex.join(p.argv)}",
                      f"     out: {p.out_dir}"]
    return "\n".join(lines)
