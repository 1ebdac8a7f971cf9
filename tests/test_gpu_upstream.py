"""The CUDA-only upstream references on a CPU: their pinned environments, the exact one-GPU commands at twin scale,
the parsing of the logs they write, and the whole run path with a stand-in upstream (repro/upstream/gpu_refs.py).
A CPU cannot run the real ones (Fast-LLM asserts CUDA; torch's CP is wrong on CPU; vLLM has no CPU build)."""

from __future__ import annotations

import io
import json
import math
import shlex
import sys
import tarfile
from pathlib import Path

import pytest

from repro.base.paths import ROOT
from repro.catalog import upstream_env
from repro.base.errors import ReproError
from repro.upstream import gpu_refs as gu

SNAPSHOTS = gu.snapshot_root()


def _fake_map(recipe) -> dict:
    """An asset map as repro writes it: every hub id / $VARIABLE the twin's assets stand for -> a folder."""
    models, datasets = {}, {}
    for name, a in recipe.twin.assets.items():
        for hub in a.stands_for:
            (models if a.kind in ("model", "tokenizer") else datasets)[hub] = f"/assets/{name}"
    return {"models": models, "datasets": datasets}


def test_each_reference_names_a_cuda_only_environment_of_its_recipes_pin(recipes):
    envs = upstream_env.load_envs()
    assert [r.name for r in gu.REFERENCES] == ["fast-llm", "granite-cp", "rlvr"]  # the order when time is short
    for ref in gu.REFERENCES:
        env, up = envs[ref.env], recipes[ref.recipe].provenance.upstream
        assert env.device == "cuda-only" and env.cuda_reason
        assert (env.repo, env.commit) == (up.repo, up.commit), ref.name
        if ref.layout:
            eq = recipes[ref.recipe].twin.equivalence
            assert ref.layout in [g.name for g in eq.layouts]
    # the pin with a CPU and a GPU environment still finds the CPU one unless the GPU one is named
    oi = envs["open-instruct-30d11b4-rlvr"]
    assert upstream_env.env_for(oi.repo, oi.commit).name == "open-instruct-30d11b4"
    assert upstream_env.env_for(oi.repo, oi.commit, name=oi.name).device == "cuda-only"


def test_gpu_environments_resolve_as_measured_and_name_the_unavailable_wheels():
    fl = upstream_env.load_envs()["fast-llm-1aa6040"]
    assert "torch==2.4.0" in fl.packages and "triton==3.0.0" in fl.packages and fl.python == "3.10"
    assert not any(p.startswith(("flash-attn", "apex")) for p in fl.packages)  # no wheel / not on PyPI: in notes
    assert any("flash-attn==2.6.3" in n and "no wheel" in n for n in fl.notes)
    assert any("apex" in n and "not on PyPI" in n for n in fl.notes)
    rl = upstream_env.load_envs()["open-instruct-30d11b4-rlvr"]
    assert any(p.startswith("vllm") for p in rl.packages) and any(p.startswith("ray") for p in rl.packages)
    from repro.plan import upstream_envs as envs

    argv = envs.compile_argv(rl, Path("/x"))
    assert argv[argv.index("--exclude-newer-package") + 1] == "pyairports=2025-10-01"
    assert "--exclude-newer-package" not in envs.compile_argv(fl, Path("/x"))


@pytest.mark.skipif(not SNAPSHOTS.is_dir(), reason="no ../shared/upstream snapshots on this machine")
def test_entry_points_exist_at_the_pins():
    envs = upstream_env.load_envs()
    for ref in gu.REFERENCES:
        env = envs[ref.env]
        tarball = SNAPSHOTS / f"{env.snapshot_name}.tar.gz"
        with tarfile.open(tarball) as tar:
            assert f"{env.snapshot_name}/{ref.entry}" in tar.getnames(), ref.name


def test_substitute_whole_words_and_flat_values():
    paths = {"mistralai/Mistral-7B-v0.1": "/a/m", "$JSON_DATA_PATH": "/a/d.json"}
    assert gu.substitute("mistralai/Mistral-7B-v0.1", paths) == "/a/m"
    assert gu.substitute("--data_path=$JSON_DATA_PATH", paths) == "--data_path=/a/d.json"
    assert gu.substitute("--data_path=$OTHER", paths) == "--data_path=$OTHER"
    assert gu.substitute("-x=$JSON_DATA_PATH", paths) == "-x=$JSON_DATA_PATH"  # only flags


@pytest.mark.parametrize("name", ["fast-llm", "granite-cp", "rlvr"])
def test_render_the_exact_one_gpu_command(recipes, tmp_path, name):
    ref = gu.by_name(name)
    recipe = recipes[ref.recipe]
    amap = _fake_map(recipe)
    r = gu.render(ref, recipe, tmp_path / name, Path("/ck"), Path("/env"), amap)
    text = shlex.join(r.argv)
    assert r.argv[0].startswith("/env/bin/") and f"/ck/{ref.entry}" in r.argv
    assert str(ROOT / "harness") not in text  # the real entry point, never the twin's runner
    for hub in [*amap["models"], *amap["datasets"]]:
        assert not any(t == hub or t.endswith("=" + hub) for t in r.argv), hub
    assert r.env["PYTHONPATH"].split(":")[-1 if not ref.extra_path else -2] == "/ck"
    if name == "fast-llm":
        assert "--nproc-per-node=1" in r.argv and "--batch_size=8" in r.argv and "--training_dtype=bf16" in r.argv
        assert r.pre == [["make", "-C", "/ck/fast_llm/csrc"]] and "REPRO_SHARED_DEVICE" not in r.env
    if name == "granite-cp":
        assert r.env["REPRO_SHARED_DEVICE"] == "1" and r.env["PYTHONPATH"].startswith(str(gu.SHIM))
        assert r.argv[r.argv.index("--mcp") + 1] == "2"
    if name == "rlvr":
        assert r.argv[r.argv.index("--vllm_sync_backend") + 1] == "gloo"
        assert r.env["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"] == "1"
        assert r.pre[0][:4] == ["/env/bin/ray", "start", "--head", "--num-gpus"]


def _fast_llm_log(path: Path, losses) -> None:
    from harness.fast_llm.logs import format_metrics

    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [format_metrics({"iteration": i, "train_iters": len(losses), "consumed_samples": 8 * i,
                             "consumed_tokens": 512 * i, "batch_size": 8, "step_time_ms": 10.0, "model_tflops": 1.0,
                             "hardware_tflops": 1.0, "tokens_per_sec_per_gpu": 5e4, "learning_rate": 1e-3,
                             "loss_scale": 1, "grad_norm": 0.5, "skipped_iters": 0, "nan_iters": 0,
                             "step_time_average_ms": 10.0, "remaining_time": 1, "completion_time": 0,
                             "percent_done": 100 * i / len(losses), "language_model_loss": v}, "Training")
             for i, v in enumerate(losses, 1)]
    path.write_text("\n".join(lines) + "\n")


def test_reference_record_parses_fast_llm_fms_and_refuses_garbage(tmp_path):
    pytest.importorskip("torch")
    env = upstream_env.load_envs()["fast-llm-1aa6040"]
    log = tmp_path / "exp/runs/0/logs/logs_rank_0.txt"
    _fast_llm_log(log, [7.5, 7.25, 7.0])
    ref = gu.by_name("fast-llm")
    assert gu.find_log(ref, tmp_path) == log
    rec = gu.reference_record(ref, env, None, ["x"], 0, 1.0, log, "NVIDIA-H100")
    assert rec["status"] == "RECORDED" and rec["steps"] == 3 and [v for _, v in rec["loss"]] == [7.5, 7.25, 7.0]
    assert rec["upstream"]["commit"] == env.commit and rec["device"] == "NVIDIA-H100"
    fms = tmp_path / "out/training_logs.jsonl"
    fms.parent.mkdir()
    fms.write_text("".join(json.dumps({"name": "training_loss", "data": {"epoch": 0.1, "step": s, "value": v,
                                                                          "timestamp": "2026-01-01T00:00:00"}}) + "\n"
                           for s, v in [(1, 2.0), (2, 1.5)]))
    g = gu.by_name("granite-cp")
    assert gu.find_log(g, tmp_path) == fms
    rec = gu.reference_record(g, upstream_env.load_envs()[g.env], None, ["x"], 0, 1.0, fms, "gpu")
    assert rec["status"] == "RECORDED" and rec["steps"] == 2
    garbage = tmp_path / "bad.txt"
    garbage.write_text("no metrics here\n")
    bad = gu.reference_record(ref, env, None, ["x"], 0, 1.0, garbage, "gpu")
    assert bad["status"] == "ERROR" and bad["issues"]
    assert gu.reference_record(ref, env, None, ["x"], 1, 1.0, None, "gpu")["status"] == "ERROR"


FAKE_TORCHRUN = """#!{python}
import os, subprocess, sys
args = sys.argv[1:]
at = next(i for i, a in enumerate(args) if a.endswith(".py"))
sys.exit(subprocess.call([{python!r}, *args[at:]]))
"""
FAKE_TRAIN = """import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from harness.fast_llm.logs import format_metrics
exp = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--experiment_dir="))
data = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--data_path="))
assert Path(data).is_file(), data  # the real path, not the $VARIABLE
log = Path(exp) / "runs/0/logs/logs_rank_0.txt"
log.parent.mkdir(parents=True)
keys = dict(iteration=1, train_iters=1, consumed_samples=8, consumed_tokens=512, batch_size=8, step_time_ms=1.0,
            model_tflops=1.0, hardware_tflops=1.0, tokens_per_sec_per_gpu=1.0, learning_rate=1e-3, loss_scale=1,
            grad_norm=1.0, skipped_iters=0, nan_iters=0, step_time_average_ms=1.0, remaining_time=0,
            completion_time=0, percent_done=100.0, language_model_loss=6.5)
log.write_text(format_metrics(keys, "Training") + "\\n")
"""


def _snapshot(folder: Path, name: str, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / f"{name}.tar.gz", "w:gz") as tar:
        for rel, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{name}/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.needs_torch
def test_run_records_a_reference_with_provenance_through_a_stand_in_upstream(tmp_path, monkeypatch):
    """The whole path on a CPU with a stand-in Fast-LLM (a script writing Fast-LLM's log line) and a stand-in
    environment: snapshot unpacked, assets resolved to paths, the pre step, the log parsed, reference.json."""
    pytest.importorskip("torch")
    from repro.plan import upstream_envs as envs

    env = upstream_env.load_envs()["fast-llm-1aa6040"]
    snaps = tmp_path / "snaps"
    _snapshot(snaps, env.snapshot_name, {"fast_llm/tools/train.py": FAKE_TRAIN.format(root=str(ROOT)),
                                          "fast_llm/csrc/Makefile": "default:\n\ttouch built\n"})
    monkeypatch.setenv(gu.SNAPSHOTS_ENV, str(snaps))
    fake_env = tmp_path / "env"
    (fake_env / "bin").mkdir(parents=True)
    torchrun = fake_env / "bin" / "torchrun"
    torchrun.write_text(FAKE_TORCHRUN.format(python=sys.executable))
    torchrun.chmod(0o755)
    monkeypatch.setattr(envs, "ensure", lambda e: envs.BuiltEnv(e.name, fake_env, "lock\n", "ab" * 32, False))
    real_checkout = gu.checkout
    monkeypatch.setattr(gu, "checkout", lambda repo, commit, cache: real_checkout(repo, commit, tmp_path / "c"))
    rec = gu.run(gu.by_name("fast-llm"), tmp_path / "out", 120, "NVIDIA-H100")
    assert rec["status"] == "RECORDED", (rec, (tmp_path / "out/upstream/fast-llm/upstream.log").read_text()[-2000:])
    assert rec["steps"] == 1 and math.isclose(rec["loss"][0][1], 6.5)
    assert rec["upstream"] == {"repo": env.repo, "commit": env.commit, "environment": env.name,
                               "lock_sha256": "ab" * 32}
    saved = json.loads((tmp_path / "out/upstream/fast-llm/reference.json").read_text())
    assert saved == rec and str(fake_env / "bin/torchrun") in saved["command"]
    assert (tmp_path / "c/upstream-src" / env.snapshot_name / "fast_llm/csrc/built").is_file()  # the pre step ran
    monkeypatch.setenv(gu.SNAPSHOTS_ENV, str(tmp_path / "none"))
    with pytest.raises(ReproError, match="no snapshot"):
        real_checkout("o/r", "c" * 40, tmp_path / "c2")
