"""The single-GPU lane on a CPU: device-keyed golden lanes, what the lane plans, its verdicts, tokens/s and MFU
over synthetic runs, the --dry-run listing and the refusal without a GPU (repro/report/gpu_lane.py,
repro/commands/gpu_ci.py, repro/twin/golden.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repro.catalog.schema import GoldenMetric
from repro.base.metrics import MetricRecord, read_jsonl
from repro.report import gpu_lane as lane
from repro.twin import golden
from repro.verify.flops import dense_flops_per_token

ROOT = Path(__file__).resolve().parent.parent
CPU_KEY = "cpu-x86_64_torch-2.13.0+cpu_transformers-5.24.0_accelerate-1.15.0"
H200_KEY = "NVIDIA-H200_torch-2.5.1+cu124_transformers-4.46.0_accelerate-1.0.1"
H100_KEY = "NVIDIA-H100-80GB-HBM3_torch-2.5.1+cu124_transformers-4.46.0_accelerate-1.0.1"
METRICS = {"loss": GoldenMetric(rtol=0.01, why="test")}
KEYS = {"m": "k1"}
TWIN_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 224, "num_hidden_layers": 2,
              "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 8, "hidden_act": "silu",
              "vocab_size": 2048, "tie_word_embeddings": False}


def _records(losses, tokens=100.0, step_time=0.5, rank=None):
    return [MetricRecord(step=i + 1, loss=v, tokens=tokens, step_time_s=step_time, rank=rank)
            for i, v in enumerate(losses)]


def _write_golden(root: Path, rid: str, key: str, losses) -> None:
    data = golden.to_golden(_records(losses), METRICS, key, KEYS, {})
    (root / rid).mkdir(parents=True, exist_ok=True)
    (root / rid / f"{key}.json").write_text(json.dumps(data))


# ---------------------------------------------------------------------------------------------
# goldens: device lanes


def test_device_lane_of_keys():
    assert golden.device_lane(CPU_KEY) == "cpu"
    assert golden.device_lane("cpu-aarch64_torch-2.13.0_transformers-5_accelerate-1") == "cpu"
    assert golden.device_lane(H200_KEY) == "NVIDIA-H200"
    assert golden.device_lane(H100_KEY) == "NVIDIA-H100-80GB-HBM3"
    assert golden.device_lane("env-a") == "cpu"  # synthetic keys naming no device stay in the CPU lane


def test_find_never_hands_a_cpu_golden_to_a_gpu_run(tmp_path):
    _write_golden(tmp_path, "r", CPU_KEY, [3.0, 2.0])
    assert golden.find("r", H200_KEY, tmp_path) is None
    other_cpu = CPU_KEY.replace("torch-2.13.0", "torch-2.14.0")
    assert golden.find("r", other_cpu, tmp_path)["env_key"] == CPU_KEY  # CPU falls back within its lane
    _write_golden(tmp_path, "r", H100_KEY, [3.0, 2.5])
    assert golden.find("r", H200_KEY, tmp_path) is None  # another GPU's golden is not this GPU's
    h100_newer = H100_KEY.replace("torch-2.5.1", "torch-2.6.0")
    assert golden.find("r", h100_newer, tmp_path)["env_key"] == H100_KEY
    assert golden.find("r", H100_KEY, tmp_path)["env_key"] == H100_KEY
    assert golden.find_any("r", tmp_path) is not None  # the progress bar's step count, any lane


def test_the_real_catalog_cpu_golden_is_not_used_for_a_gpu_run():
    rid = "tulu3-8b-sft"
    assert any(golden.device_lane(p.stem) == "cpu" for p in (golden.GOLDEN_DIR / rid).glob("*.json"))
    assert golden.find(rid, H200_KEY) is None


def test_gpu_run_without_gpu_golden_is_not_measured_with_the_reason():
    got = golden.compare(_records([3.0, 2.0]), None, METRICS, H200_KEY, KEYS, "src")
    assert [c.status for c in got] == ["NOT-MEASURED"]
    assert "NVIDIA-H200" in got[0].message and "CPU goldens" in got[0].message
    cpu = golden.compare(_records([3.0, 2.0]), None, METRICS, CPU_KEY, KEYS, "src")
    assert "CPU goldens" not in cpu[0].message


def test_a_cpu_golden_handed_to_a_gpu_run_is_refused_even_when_the_curves_agree():
    ref = golden.to_golden(_records([3.0, 2.0]), METRICS, CPU_KEY, KEYS, {})
    got = golden.compare(_records([3.0, 2.0]), ref, METRICS, H200_KEY, KEYS, "src")
    assert [c.status for c in got] == ["NOT-MEASURED"] and "never compared across devices" in got[0].message
    same_lane = golden.compare(_records([3.0, 2.0]), ref, METRICS, CPU_KEY, KEYS, "src")
    assert all(c.status == "PASS" for c in same_lane)


# ---------------------------------------------------------------------------------------------
# what the lane plans


def test_plan_on_one_gpu_runs_single_process_twins_and_names_why_others_skip(recipes, tmp_path):
    planned = lane.plan(recipes, tmp_path, 1, "/venv/bin/python")
    assert [p.id for p in planned] == sorted(r for r, x in recipes.items() if x.twin)
    by = {p.id: p for p in planned}
    single = by["fms-llama2-7b-sft-single-gpu"]
    assert single.skip is None and single.processes == 1
    assert single.argv == ["/venv/bin/python", "-m", "repro.cli", "run", "fms-llama2-7b-sft-single-gpu", "--scale",
                           "twin", "--out", str(tmp_path / "fms-llama2-7b-sft-single-gpu"), "--fresh", "--quiet"]
    assert single.out_dir == tmp_path / "fms-llama2-7b-sft-single-gpu"
    # a 2-process twin whose equivalence block declares a 1-process layout of its effective batch runs that
    sft = by["tulu3-8b-sft"]
    assert sft.skip is None and sft.layout == "1x1x4" and sft.processes == 1
    assert sft.argv[-2:] == ["--geometry", "1x1x4"] and "flash-attn" in sft.kernels
    assert "vllm" in by["tulu3-8b-rlvr"].kernels
    # one whose 1-process layouts have another effective batch (toolgen: 4 vs 8) does not, and says why
    tool = by["toolgen-llama3-8b-memorization"]
    assert tool.skip and "needs 2 GPUs" in tool.skip and "no layout of at most 1" in tool.skip and tool.layout is None
    # a chained twin needs what its upstream stage needs too
    chained = by["acerag-llama2-7b-longalpaca"]
    assert chained.skip and "upstream stage needs 2 GPUs" in chained.skip
    for p in planned:
        r = recipes[p.id]
        if p.skip is None and p.layout is None:
            assert r.twin.geometry.processes == 1 and "--geometry" not in p.argv
        if p.layout:
            g = next(g for g in r.twin.equivalence.layouts if g.name == p.layout)
            assert g.processes == 1 and g.effective == r.twin.geometry.effective
    two = {p.id: p for p in lane.plan(recipes, tmp_path, 2, "py")}
    assert two["tulu3-8b-sft"].layout is None and two["tulu3-8b-sft"].skip is None  # its own geometry fits
    assert two["acerag-llama2-7b-longalpaca"].skip is None
    four = lane.plan(recipes, tmp_path, 4, "py")
    assert {p.id for p in four if p.skip} == {p.id for p in four if p.processes > 4}
    assert len([p for p in four if p.skip is None]) > len([p for p in planned if p.skip is None])


def test_a_run_at_another_layout_gets_the_approximate_lane_only():
    ref = golden.to_golden(_records([10.0, 9.0, 8.0]), METRICS, CPU_KEY, KEYS, {})
    near = _records([10.0, 9.00002, 8.0])  # inside rtol, but not equal at 5 decimals
    exact = golden.compare(near, ref, METRICS, CPU_KEY, KEYS, "src")
    assert next(c for c in exact if c.name == "loss vs golden").status == "FAIL"
    approx = golden.compare(near, ref, METRICS, CPU_KEY, KEYS, "src", deterministic=False)
    loss = next(c for c in approx if c.name == "loss vs golden")
    assert loss.status == "PASS" and "deterministic" not in loss.message


def test_run_geometry_accepts_only_declared_layouts_of_the_same_batch(recipes):
    from repro.twin.session import layout
    from repro.base.errors import ReproError

    assert layout(recipes["tulu3-8b-sft"], "1x1x4").processes == 1
    assert layout(recipes["tulu3-8b-sft"], "2x1x2") == recipes["tulu3-8b-sft"].twin.geometry
    with pytest.raises(ReproError, match="not a layout of this twin.*2x1x2, 1x1x4, 4x1x1"):
        layout(recipes["tulu3-8b-sft"], "3x1x1")
    with pytest.raises(ReproError, match="same effective batch"):
        layout(recipes["toolgen-llama3-8b-memorization"], "1x2x4")  # declared, but effective 8, not 4


def test_chain_processes_counts_upstream_stages(recipes):
    r = recipes["acerag-llama2-7b-longalpaca"]
    assert r.needs is not None
    up = recipes[r.needs.stage]
    assert lane.chain_processes(r, recipes.__getitem__) == max(r.twin.geometry.processes, up.twin.geometry.processes)


def test_optional_package_lines_say_what_happens():
    none = lane.optional_lines({"flash-attn": None, "vllm": None})
    assert none[0].startswith("flash-attn: not installed, skipped") and "sdpa" in none[0]
    assert none[1].startswith("vllm: not installed, skipped")
    some = lane.optional_lines({"flash-attn": "2.7.4", "vllm": None})
    assert some[0].startswith("flash-attn 2.7.4:") and "flash_attention_2" in some[0]

    def version(dist):
        if dist == "flash-attn":
            return "2.7.4"
        raise lane.metadata.PackageNotFoundError(dist)

    assert lane.installed_optional(version) == {"flash-attn": "2.7.4", "vllm": None}


# ---------------------------------------------------------------------------------------------
# verdicts


def _check(name, status, message=""):
    return {"name": name, "status": status, "message": message}


def test_lane_verdicts():
    ok = [_check("step sequence", "PASS"), _check("finite loss", "PASS")]
    assert lane.lane_verdict({"checks": ok})[0] == lane.PASSED
    nog = ok + [_check("golden curve", "NOT-MEASURED", "no golden curve is recorded for this GPU (NVIDIA-H200)")]
    v, why = lane.lane_verdict({"checks": nog})
    assert v == lane.NO_GOLDEN and "NVIDIA-H200" in why
    bad = nog + [_check("max_at_most extra.grad_norm_after_clip", "FAIL")]
    v, why = lane.lane_verdict({"checks": bad})
    assert v == lane.FAILED and "grad_norm_after_clip" in why
    um = ok + [_check("value_at_step loss", "NOT-MEASURED", "no loss at step 3")]
    assert lane.lane_verdict({"checks": um})[0] == lane.UNMEASURED
    assert lane.lane_verdict(None, returncode=1, last_line="CUDA error")[0] == lane.ERROR
    assert "CUDA error" in lane.lane_verdict(None, returncode=1, last_line="CUDA error")[1]
    assert lane.lane_verdict({"checks": ok}, timed_out=True)[0] == lane.TIMEOUT
    assert lane.lane_verdict({"checks": []})[0] == lane.ERROR
    rows = [lane.Row(i, v, "") for i, v in enumerate([lane.PASSED, lane.NO_GOLDEN, lane.SKIP, lane.TIMEOUT,
                                                      lane.NOT_RUN, lane.ERROR, lane.FAILED, lane.UNMEASURED])]
    assert [r.verdict for r in lane.failed(rows)] == [lane.TIMEOUT, lane.NOT_RUN, lane.ERROR, lane.FAILED,
                                                      lane.UNMEASURED]


# ---------------------------------------------------------------------------------------------
# tokens/s and MFU


def test_throughput_drops_warmup_and_keeps_rank_zero():
    recs = _records([3, 2, 1, 0.5], tokens=200.0, step_time=0.5)
    recs[0].step_time_s = 10.0  # CUDA start-up in step 1
    tp = lane.throughput(recs + _records([3, 2, 1, 0.5], tokens=999.0, step_time=0.01, rank=1), processes=2)
    assert tp.steps == 3 and tp.tokens_per_s == pytest.approx(400.0)
    assert tp.tokens_per_s_per_device == pytest.approx(200.0) and tp.tokens_per_step == pytest.approx(200.0)
    assert "warm-up" in tp.reason
    two = lane.throughput(_records([3, 2], tokens=100.0, step_time=0.25), processes=1)
    assert two.steps == 2 and two.tokens_per_s == pytest.approx(400.0)


def test_throughput_not_measured_without_tokens_or_times():
    recs = _records([3, 2, 1])
    recs[2].step_time_s = None
    tp = lane.throughput(recs, 1)
    assert tp.tokens_per_s is None and "step_time_s at step 3" in tp.reason
    recs = _records([3, 2, 1])
    for r in recs:
        r.tokens = None
    assert "no tokens" in lane.throughput(recs, 1).reason
    assert lane.throughput([], 1).tokens_per_s is None


def test_architecture_from_twin_config_matches_hand_count():
    arch = lane.architecture(TWIN_LLAMA, "x/config.json")
    assert not isinstance(arch, str)
    n = 2 * (64 * 8 * (2 * 32 + 2 * 8) + 3 * 64 * 224) + 64 * 2048  # q,k,v,o + gated MLP per layer; LM head
    assert dense_flops_per_token(arch, 128) == 6 * n + 2 * 6 * 32 * 16 * 128
    assert "no FLOPs mapping" in lane.architecture({**TWIN_LLAMA, "model_type": "granitemoehybrid"}, "x")
    assert "lacks a usable field" in lane.architecture({k: v for k, v in TWIN_LLAMA.items() if k != "vocab_size"}, "x")


def test_choose_architecture_refuses_mixed_shapes(tmp_path):
    a, name = lane.choose_architecture({"policy": TWIN_LLAMA, "sft-shape": dict(TWIN_LLAMA)})
    assert name == "policy" and a.hidden == 64
    a, why = lane.choose_architecture({"small": TWIN_LLAMA, "big": {**TWIN_LLAMA, "hidden_size": 128}})
    assert a is None and "several model shapes" in why
    assert lane.choose_architecture({})[0] is None
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(TWIN_LLAMA))
    (tmp_path / "tok").mkdir()
    amap = {"keys": {"m": "1", "tok": "2"}, "models": {"m": str(tmp_path / "m"), "meta-llama/X": str(tmp_path / "m"),
                                                       "tok": str(tmp_path / "tok")}}
    read = lambda p: json.loads(p.read_text()) if p.is_file() else None  # noqa: E731
    assert list(lane.model_configs(amap, read)) == ["m"]  # hub-id aliases and a tokenizer are not models


def test_mfu_uses_the_suite_peak_table():
    arch = lane.architecture(TWIN_LLAMA, "x")
    tp = lane.Throughput(1.0e6, 1.0e6, 10, 512.0, "synthetic")
    use = lane.utilisation(tp, arch, 4, "NVIDIA-H200")
    fpt = dense_flops_per_token(arch, 128)
    assert use.gpu == "H200" and use.peak == 989e12
    assert use.mfu == pytest.approx(1.0e6 * fpt / 989e12) and "mean sequence 128" in use.reason
    assert lane.utilisation(tp, arch, 4, "NVIDIA-H100-80GB-HBM3").gpu == "H100-SXM"
    assert lane.utilisation(tp, arch, 4, "cpu-x86_64").mfu is None
    assert "no dense-BF16 peak" in lane.utilisation(tp, arch, 4, "Tesla-K80").reason
    assert lane.utilisation(tp, "no FLOPs mapping for x", 4, "NVIDIA-H200").reason == "no FLOPs mapping for x"
    none = lane.utilisation(lane.Throughput(None, None, 0, None, "no tokens"), arch, 4, "NVIDIA-H200")
    assert none.mfu is None and "no tokens" in none.reason


def test_row_and_summary_from_a_synthetic_gpu_run(tmp_path):
    p = lane.Planned("tulu3-8b-sft", ["py"], tmp_path / "t", tmp_path / "t.log", 1, None, ("flash-attn",))
    verdict = {"checks": [_check("step sequence", "PASS"),
                          _check("golden curve", "NOT-MEASURED", "no golden curve is recorded for this GPU")]}
    manifest = {"wall_s": 12.5, "hardware": {"device": "NVIDIA-H200"}, "plan": {"processes": 1, "effective_batch": 4}}
    recs = _records([3, 2, 1, 0.5], tokens=512.0, step_time=0.01)
    row = lane.row_from_run(p, verdict, manifest, recs, {"m": TWIN_LLAMA}, installed={"flash-attn": None})
    assert row.verdict == lane.NO_GOLDEN and row.wall_s == 12.5 and row.train_wall_s == 12.5
    timed = lane.row_from_run(p, verdict, manifest, recs, {}, wall_s=20.0)
    assert timed.wall_s == 20.0 and timed.train_wall_s == 12.5  # the lane's own clock wins for the table
    assert row.tokens_per_s == pytest.approx(51200.0) and row.mfu == pytest.approx(
        51200.0 * dense_flops_per_token(lane.architecture(TWIN_LLAMA, "x"), 128) / 989e12)
    assert row.notes == ["flash-attn: asked for, not installed (skipped)"]
    skip = lane.Row("x", lane.SKIP, "needs 2 GPUs")
    md = lane.summary_markdown([row, skip], ["GPU lane: test"])
    assert "| id | verdict | wall s | tokens/s | tokens/s/device | MFU | reason |" in md
    assert "| tulu3-8b-sft | NO-GOLDEN | 12.5 | 51200 | 51200 |" in md
    assert "| x | SKIP | - | - | - | - | needs 2 GPUs |" in md and "Lane: passed" in md
    data = json.loads(lane.summary_json([row, lane.Row("y", lane.TIMEOUT, "killed")], []))
    assert data["failed"] == ["y"] and data["rows"][0]["id"] == "tulu3-8b-sft"
    assert "Lane: FAILED (y)" in lane.summary_markdown([row, lane.Row("y", lane.TIMEOUT, "killed")], [])


# ---------------------------------------------------------------------------------------------
# the command: running one twin (a stand-in process), --dry-run, the refusal


def test_run_one_reads_back_the_twin_folder_and_kills_at_the_limit(tmp_path):
    from repro.commands import gpu_ci

    out = tmp_path / "t"
    script = (
        "import json, pathlib, sys\n"
        f"o = pathlib.Path({str(out)!r}); (o / 'train' / 'x').mkdir(parents=True)\n"
        "(o / 'verdict.json').write_text(json.dumps({'checks': [{'name': 'step sequence', 'status': 'PASS'}]}))\n"
        "(o / 'manifest.json').write_text(json.dumps({'wall_s': 3.0, 'hardware': {'device': 'cpu-x86_64'},"
        " 'plan': {'processes': 1, 'effective_batch': 2}}))\n"
        "rows = [{'step': i, 'loss': 1.0, 'tokens': 50.0, 'step_time_s': 0.1} for i in (1, 2, 3)]\n"
        "(o / 'train' / 'x' / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\\n' for r in rows))\n"
        f"m = o / 'model'; m.mkdir(); (m / 'config.json').write_text(json.dumps({TWIN_LLAMA!r}))\n"
        "(o / 'assets.json').write_text(json.dumps({'keys': {'m': '1'}, 'models': {'m': str(m)}}))\n"
        "print('twin done')\n")
    p = lane.Planned("fake", [sys.executable, "-c", script], out, tmp_path / "fake.log", 1)
    row = gpu_ci._run_one(p, 60, {})
    assert row.verdict == lane.PASSED and row.tokens_per_s == pytest.approx(500.0)
    assert "CPU has no GPU peak" in row.mfu_note and "twin done" in p.log.read_text()
    slow = lane.Planned("slow", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "s",
                        tmp_path / "slow.log", 1)
    t0 = time.monotonic()
    row = gpu_ci._run_one(slow, 1.0, {})
    assert row.verdict == lane.TIMEOUT and time.monotonic() - t0 < 25
    crash = lane.Planned("crash", [sys.executable, "-c", "raise SystemExit('boom: CUDA out of memory')"],
                         tmp_path / "c", tmp_path / "crash.log", 1)
    row = gpu_ci._run_one(crash, 30, {})
    assert row.verdict == lane.ERROR and "boom" in row.reason


def _cli(*args, **env):
    e = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-m", "repro.cli", "gpu-ci", *args], cwd=ROOT, env=e,
                          capture_output=True, text=True, timeout=120)


def test_dry_run_lists_every_twin_with_command_and_folder_on_cpu(recipes, tmp_path):
    out = tmp_path / "lane"
    r = _cli("--dry-run", "--out", str(out), REPRO_FORCE_CPU="1")
    assert r.returncode == 0, r.stderr
    twins = sorted(rid for rid, x in recipes.items() if x.twin)
    for rid in twins:
        assert f" {rid}" in r.stdout and str(out / rid) in r.stdout
    assert "RUN  fms-llama2-7b-sft-single-gpu" in r.stdout
    assert f"-m repro.cli run fms-llama2-7b-sft-single-gpu --scale twin --out {out / 'fms-llama2-7b-sft-single-gpu'}" \
        in r.stdout
    assert "SKIP toolgen-llama3-8b-memorization: needs 2 GPUs" in r.stdout
    assert f"run tulu3-8b-sft --scale twin --out {out / 'tulu3-8b-sft'} --fresh --quiet --geometry 1x1x4" in r.stdout
    assert "flash-attn" in r.stdout and "vllm" in r.stdout
    assert not out.exists()  # a dry run writes nothing
    two = _cli("--dry-run", "--out", str(out), "--gpus", "2", "--only", "tulu3-8b-sft", REPRO_FORCE_CPU="1")
    assert two.returncode == 0 and "would run 1 of 1 twins" in two.stdout and "RUN  tulu3-8b-sft" in two.stdout


def test_without_gpu_it_refuses_in_one_line_and_runs_nothing(tmp_path):
    out = tmp_path / "lane"
    r = _cli("--out", str(out), REPRO_FORCE_CPU="1")
    assert r.returncode != 0
    assert r.stdout == "" and r.stderr.strip().count("\n") == 0 and "no NVIDIA GPU" in r.stderr
    assert not out.exists()
    bad = _cli("--dry-run", "--only", "no-such-recipe", REPRO_FORCE_CPU="1")
    assert bad.returncode != 0 and "no-such-recipe" in bad.stderr


def test_nox_session_is_thin_and_refuses_before_building_anything():
    text = (ROOT / "noxfile.py").read_text()
    assert '@nox.session(name="gpu-ci", default=False)' in text
    body = text.split('def gpu_ci(')[1]
    assert '_repro(session, "gpu-ci", *session.posargs)' in body
    assert body.index("_has_gpu()") < body.index("_ensure_env(session)")


@pytest.mark.slow
def test_the_lane_reads_a_real_twin_folder(recipes, tmp_path):
    """One real twin (CPU), through the lane's own runner: its verdict, tokens/s from its metrics, the model
    shape from its assets; on a CPU the golden is the CPU one and MFU is not measured (no GPU peak)."""
    from repro.commands import gpu_ci

    rid = "tulu3-8b-sft"
    p = next(x for x in lane.plan(recipes, tmp_path, 2, sys.executable, [rid]))
    assert p.skip is None
    row = gpu_ci._run_one(p, 600, {})
    assert row.verdict == lane.PASSED, (row.reason, p.log.read_text()[-2000:])
    assert row.tokens_per_s and row.tokens_per_s > 0 and row.tokens_per_s_per_device == pytest.approx(
        row.tokens_per_s / 2)
    assert "over 99 steps (step 1 left out as warm-up)" in row.throughput_note
    assert row.mfu is None and "CPU has no GPU peak" in row.mfu_note
    assert row.wall_s >= row.train_wall_s > 0
    amap = json.loads((p.out_dir / "assets.json").read_text())
    arch, name = lane.choose_architecture(lane.model_configs(amap, gpu_ci._read_json))
    assert name == "llama-3.1-8b-twin" and (arch.hidden, arch.layers, arch.heads, arch.vocab) == (64, 2, 32, 2048)
    h200 = lane.utilisation(lane.throughput(list(read_jsonl(next((p.out_dir / "train").glob("*/metrics.jsonl")))),
                                            2), arch, 4, "NVIDIA-H200")
    assert h200.mfu is not None and 0 < h200.mfu < 1e-3  # what the same rate would be on an H200: tiny


@pytest.mark.slow
def test_a_declared_one_process_layout_runs_and_meets_the_golden_approximately(tmp_path):
    """What the one-GPU lane runs for a 2-process twin: `repro run --geometry 1x1x4` (a layout its equivalence
    block declares). On CPU it must meet the 2x1x2 CPU golden in the approximate lane, with no exact lane."""
    out = tmp_path / "t"
    r = subprocess.run([sys.executable, "-m", "repro.cli", "run", "tulu3-8b-sft", "--scale", "twin", "--geometry",
                        "1x1x4", "--out", str(out), "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["plan"]["processes"], manifest["plan"]["grad_accum"], manifest["plan"]["effective_batch"]) == \
        (1, 4, 4)
    checks = {c["name"]: c for c in json.loads((out / "verdict.json").read_text())["checks"]}
    loss = checks["loss vs golden"]
    assert loss["status"] == "PASS" and "deterministic" not in loss["message"]


def test_golden_record_from_a_run_at_another_layout_is_refused(tmp_path, monkeypatch, capsys):
    from repro.cli import main
    from repro.twin import runner

    monkeypatch.setattr(runner, "git_state", lambda: ("0" * 40, False))
    (tmp_path / "train" / "x").mkdir(parents=True)
    (tmp_path / "train" / "x" / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    plan = {"processes": 1, "per_device_batch": 1, "grad_accum": 4}
    (tmp_path / "manifest.json").write_text(json.dumps({"recipe": "tulu3-8b-sft", "overrides": [], "plan": plan,
                                                        "env_key": H200_KEY, "assets": {}}))
    assert main(["golden", "record", "tulu3-8b-sft", "--from", str(tmp_path)]) == 2
    assert "ran at 1x1x4, not the twin block's 2x1x2" in capsys.readouterr().err
