"""Ranks sharing one GPU (REPRO_SHARED_DEVICE), on a CPU: the rank -> device binding with a faked device count,
the environment the trainers see, the key that keeps shared-device stages and goldens apart, the host-staged
point-to-point, and the collective probe tools/gpu-check.sh runs first (harness/runtime/dist.py,
harness/runtime/shared_probe.py, repro/device.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.runtime import dist
from repro.base import device
from repro.base.errors import ReproError

ROOT = Path(__file__).resolve().parent.parent


def test_binding_per_rank_shared_and_cpu():
    assert dist.bind(1, 2, cuda=False, device_count=0, shared=False) == dist.Binding("cpu", "gloo", False)
    assert dist.bind(1, 2, cuda=True, device_count=2, shared=False) == dist.Binding("cuda:1", "nccl", False)
    assert dist.bind(1, 2, cuda=True, device_count=1, shared=True) == dist.Binding("cuda:0", "gloo", True)
    assert dist.bind(0, 1, cuda=True, device_count=1, shared=True).shared is False  # one rank shares nothing
    assert dist.bind(3, 4, cuda=True, device_count=8, shared=True).device == "cuda:0"  # the mode wins
    with pytest.raises(ReproError, match="local rank 1 needs cuda:1 but this machine has 1 GPU.*REPRO_SHARED_DEVICE=1"):
        dist.bind(1, 2, cuda=True, device_count=1, shared=False)


def test_shared_flag_and_layout_tag():
    assert device.shared_device({"REPRO_SHARED_DEVICE": "1"}) and not device.shared_device({})
    assert not device.shared_device({"REPRO_SHARED_DEVICE": "0"})
    assert device.layout_tag(True, {"REPRO_SHARED_DEVICE": "1"}) == "_shared-device"
    assert device.layout_tag(False, {"REPRO_SHARED_DEVICE": "1"}) == ""  # a CPU run keeps its key (and goldens)
    assert device.layout_tag(True, {}) == ""


def test_enter_shared_device_rebinds_every_library_to_cuda0_and_opens_gloo(monkeypatch):
    monkeypatch.setattr(dist, "cuda_usable", lambda: True)
    calls = []
    env = {"REPRO_SHARED_DEVICE": "1", "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
           "TORCHELASTIC_RUN_ID": "x"}
    b = dist.enter_shared_device(env, init=lambda backend: calls.append(("init", backend)),
                                 set_device=lambda i: calls.append(("device", i)))
    assert b == dist.Binding("cuda:0", "gloo", True)
    assert env["LOCAL_RANK"] == "0" and env[dist.LAUNCH_LOCAL_RANK_ENV] == "1"
    assert env["ACCELERATE_TORCH_DEVICE"] == "cuda:0"
    assert calls == [("device", 0), ("init", "gloo")]
    # not shared, one rank, or no CUDA: nothing changes
    for e in ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"},
              {"REPRO_SHARED_DEVICE": "1", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}):
        before = dict(e)
        assert dist.enter_shared_device(e, init=calls.append, set_device=calls.append) is None and e == before
    monkeypatch.setattr(dist, "cuda_usable", lambda: False)
    e = dict(env, LOCAL_RANK="1")
    e.pop(dist.LAUNCH_LOCAL_RANK_ENV)
    assert dist.enter_shared_device(e, init=calls.append, set_device=calls.append) is None and e["LOCAL_RANK"] == "1"


def test_every_trainer_starts_through_run_main_which_enters_the_mode():
    """The mode is applied in one place: every twin runner ends with run_main, which calls enter_shared_device."""
    from repro.catalog import loader

    entry = (ROOT / "harness/runtime/entry.py").read_text(encoding="utf-8")
    assert "enter_shared_device()" in entry
    runners = {r.twin.runner for r in loader.load_all().values() if r.twin}
    for runner in runners:
        assert "run_main(" in (ROOT / runner).read_text(encoding="utf-8"), runner


def test_stage_key_and_env_key_carry_the_shared_binding_on_a_gpu(monkeypatch):
    from repro.catalog import loader
    from repro.twin import chain, runner

    recipe = loader.get("tulu3-8b-sft")
    cpu = chain.stage_key(recipe)
    monkeypatch.setenv("REPRO_SHARED_DEVICE", "1")
    assert chain.stage_key(recipe) == cpu  # on a CPU the mode changes nothing
    monkeypatch.setattr(runner, "cuda_usable", lambda: True)
    monkeypatch.setattr(runner, "device_name", lambda: "NVIDIA-H100-80GB-HBM3")
    shared = chain.stage_key(recipe)
    assert runner.env_key().startswith("NVIDIA-H100-80GB-HBM3_torch-") and runner.env_key().endswith("_shared-device")
    monkeypatch.delenv("REPRO_SHARED_DEVICE")
    per_rank = chain.stage_key(recipe)
    assert len({cpu, shared, per_rank}) == 3  # device and binding each key the cached stage

    from repro.twin.golden import device_lane

    assert device_lane(runner.env_key() + "_shared-device") == device_lane(runner.env_key()) != "cpu"


def test_point_to_point_is_host_staged_only_for_cuda_over_gloo():
    from harness.granite_cp.comm import host_staged

    assert host_staged("cuda", "gloo") and not host_staged("cuda", "nccl") and not host_staged("cpu", "gloo")


@pytest.mark.needs_torch
@pytest.mark.parametrize("broken", ["", "reduce_scatter_tensor"])
def test_collective_probe_on_two_cpu_ranks_and_its_negative_control(tmp_path, broken):
    pytest.importorskip("torch")
    out = tmp_path / "probe.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), REPRO_SHARED_DEVICE="1", REPRO_PROBE_BREAK=broken,
               REPRO_FORCE_CPU="1", TMPDIR=str(tmp_path))
    port = str(29600 + (os.getpid() % 200) + (7 if broken else 0))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
                        str(ROOT / "harness/runtime/shared_probe.py"), str(out)], env=env, capture_output=True,
                       text=True, timeout=180)
    got = json.loads(out.read_text())
    assert got["device"] == "cpu" and got["backend"] == "gloo" and got["world_size"] == 2
    if not broken:
        assert r.returncode == 0, r.stderr[-2000:]
        assert set(got["ops"].values()) == {"ok"} and "reduce_scatter_tensor" in got["ops"]
    else:
        assert r.returncode != 0
        assert got["ops"][broken].startswith("wrong") and got["ops"]["all_reduce"] == "ok"
