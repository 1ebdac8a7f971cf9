"""Interrupted, resumed and shared runs: training dies with the CLI, one folder holds one run, a
resume under other settings is refused, nothing is written outside --out and the cache, divergence
stops the run at its step, and out-of-memory retries keep the effective batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repro import catalog
from repro.catalog.schema import TwinGeometry
from repro.base.errors import ReproError
from repro.base.metrics import MetricRecord
from repro.plan import retry
from repro.twin import outdir
from repro.twin.runner import TwinResult, TwinRun
from repro.twin.verdict import step_sequence

RECIPE = "tulu3-8b-sft"
REPRO = str(Path(sys.executable).parent / "repro")


def _run(records):
    run = TwinRun(catalog.get(RECIPE), Path("."), TwinGeometry(processes=1, per_device=1, grad_accum=1), [], {},
                  [], {}, False)
    return TwinResult(run, 0, 0.0, tuple(records))


def test_duplicate_or_missing_steps_fail_the_verdict():
    ok = [MetricRecord(step=s, loss=1.0) for s in (1, 2, 3)]
    assert step_sequence(_run(ok)).status == "PASS"
    twice = ok + [MetricRecord(step=2, loss=1.0)]
    gap = [MetricRecord(step=s, loss=1.0) for s in (1, 3)]
    assert step_sequence(_run(twice)).status == "FAIL" and "duplicate steps [2]" in step_sequence(_run(twice)).message
    assert step_sequence(_run(gap)).status == "FAIL" and "missing steps [2]" in step_sequence(_run(gap)).message
    assert step_sequence(_run([])).status == "FAIL"


def test_one_folder_one_run_lock(tmp_path):
    with outdir.claimed(tmp_path):
        with pytest.raises(ReproError, match=f"another repro run \\(pid {os.getpid()}\\)"):
            with outdir.claimed(tmp_path):
                pass
    with outdir.claimed(tmp_path):  # released when the first run ends
        pass


def test_out_that_is_a_file_or_unwritable_is_bad_input(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ReproError, match="is not a folder"):
        outdir.usable_dir(f)
    with pytest.raises(ReproError, match="cannot create it"):
        outdir.usable_dir(f / "below")


def test_resume_under_other_settings_is_refused_naming_the_difference(tmp_path):
    old = {"recipe": RECIPE, "geometry": "2x1x2", "args": ["--learning_rate", "2e-3", "--seed", "1"], "assets": {}}
    (tmp_path / "train" / "sft_8b" / "step_4").mkdir(parents=True)
    (tmp_path / outdir.SETTINGS).write_text(json.dumps(old))
    new = {**old, "args": ["--learning_rate", "1e-3", "--seed", "1"]}
    with pytest.raises(ReproError, match="--learning_rate 2e-3 -> 1e-3"):
        outdir.reconcile(tmp_path, new, fresh=False)
    assert outdir.reconcile(tmp_path, old, fresh=False) == {"from": "train/sft_8b/step_4", "settings": "unchanged"}
    assert outdir.reconcile(tmp_path, new, fresh=True) is None and not (tmp_path / "train").exists()


def test_oom_retry_halves_the_micro_batch_only_where_the_loss_allows():
    recipe = catalog.get(RECIPE)
    with pytest.raises(ReproError, match="fixes the per-device batch"):
        retry.halved(recipe, TwinGeometry(processes=1, per_device=2, grad_accum=2))
    free = recipe.model_copy(update={"batch": recipe.batch.model_copy(update={"per_device_policy": "at_most"})})
    assert retry.halved(free, TwinGeometry(processes=2, per_device=4, grad_accum=1)).name == "2x2x2"
    with pytest.raises(ReproError, match="cannot be halved"):
        retry.halved(free, TwinGeometry(processes=2, per_device=1, grad_accum=4))


# ---------------------------------------------------------------------------------------------
# slow: the real CLI and trainers


def _start(out: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    # a non-interactive shell starts background jobs with SIGINT ignored; a terminal does not
    return subprocess.Popen([REPRO, "run", RECIPE, "--scale", "twin", "--out", str(out), "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or dict(os.environ),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _trainers(out: Path) -> list[str]:
    ps = subprocess.run(["ps", "-eww", "-o", "pid=,args="], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if str(out) in line and "ps -eww" not in line]


def _wait_for_training(out: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(out.glob("train/*/metrics.jsonl")) and (out / "train.log").read_text().count("Step:") >= 1:
            return
        time.sleep(0.5)
    raise AssertionError("the twin never started training")


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 130), (signal.SIGKILL, -9)])
def test_stopping_the_cli_stops_every_training_process(sig, code, tmp_path):
    out = tmp_path / "run"
    proc = _start(out)
    _wait_for_training(out)
    assert _trainers(out)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    if sig != signal.SIGKILL:
        assert err.strip().splitlines() == ["repro: error: interrupted: every training process was stopped"], err
    deadline = time.monotonic() + 20
    while _trainers(out) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _trainers(out), _trainers(out)


@pytest.mark.slow
def test_kill_then_resume_with_other_settings_is_refused_and_same_settings_resume(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "REPRO_TWIN_KILL_AFTER_STEP": "3"}
    first = _start(out, "--set", "learning_rate=2e-3", "--set", "checkpointing_steps=2", env=env)
    first.communicate(timeout=600)
    assert outdir.checkpoints(out), "the killed run left no checkpoint"
    refused = subprocess.run([REPRO, "run", RECIPE, "--out", str(out), "--quiet", "--set", "checkpointing_steps=2"],
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "--learning_rate 2e-3 -> 1e-3" in refused.stderr, refused.stderr
    resumed = subprocess.run([REPRO, "run", RECIPE, "--out", str(out), "--quiet", "--set", "learning_rate=2e-3",
                              "--set", "checkpointing_steps=2"], capture_output=True, text=True, timeout=600)
    assert "resuming from train/sft_8b/step_2" in resumed.stdout, resumed.stdout + resumed.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["resumed"] == {"from": "train/sft_8b/step_2", "settings": "unchanged"}
    assert manifest["overrides"][0] == {"flag": "--learning_rate", "values": ["2e-3"]}
    steps = [json.loads(x)["step"] for x in next(out.glob("train/*/metrics.jsonl")).read_text().splitlines()]
    assert steps == list(range(1, 101))


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    first = _start(out)
    _wait_for_training(out)
    second = subprocess.run([REPRO, "run", RECIPE, "--out", str(out), "--quiet"], capture_output=True, text=True,
                            timeout=120)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)
    assert second.returncode == 2 and "another repro run" in second.stderr


@pytest.mark.slow
def test_nothing_is_written_outside_out_and_the_cache(tmp_path):
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp), "XDG_CACHE_HOME": str(home / ".cache")}
    proc = _start(tmp_path / "run", env=env)
    proc.communicate(timeout=600)
    assert proc.returncode == 0
    assert not any(home.iterdir()) and not any(tmp.iterdir()), (list(home.rglob("*"))[:5], list(tmp.rglob("*"))[:5])


@pytest.mark.slow
def test_divergence_stops_the_run_and_the_verdict_names_the_step(tmp_path):
    proc = _start(tmp_path / "run", "--set", "learning_rate=1e6")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1
    checks = {c["name"]: c for c in json.loads((tmp_path / "run" / "verdict.json").read_text())["checks"]}
    div = checks["no divergence"]
    assert div["status"] == "FAIL" and "training stopped at step" in div["message"]
    steps = json.loads((tmp_path / "run" / "manifest.json").read_text())["steps"]
    assert steps < 10 and f"step {steps}:" in div["message"]


@pytest.mark.slow
def test_injected_oom_retries_at_half_the_micro_batch(tmp_path, monkeypatch, capsys):
    from repro.twin.session import run_twin

    monkeypatch.setenv("REPRO_TWIN_INJECT_OOM_ABOVE", "1")
    base = catalog.get(RECIPE)
    twin = base.twin.model_copy(update={"geometry": TwinGeometry(processes=1, per_device=2, grad_accum=2)})
    free = base.model_copy(update={"twin": twin,
                                   "batch": base.batch.model_copy(update={"per_device_policy": "at_most"})})
    run_twin(free, tmp_path / "run", ["max_train_samples=16"], echo=False)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["retries"] == [{"geometry": "1x2x2", "error": "out of memory", "retry_with": "1x1x4"}]
    assert manifest["plan"]["per_device_batch"] == 1 and manifest["plan"]["effective_batch"] == 4
    with pytest.raises(ReproError, match="fixes the per-device batch"):
        run_twin(base.model_copy(update={"twin": twin}), tmp_path / "fixed", [], echo=False)
