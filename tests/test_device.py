"""One device rule: REPRO_FORCE_CPU wins over an nvidia-smi on PATH, in nox, the CLI and the twin."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from repro.base import device
from repro.base.paths import ROOT

FAKE_SMI = "#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 81559'\necho 'NVIDIA H100 80GB HBM3, 81559'\n"


@pytest.fixture()
def fake_nvidia_smi(tmp_path, monkeypatch):
    exe = tmp_path / "nvidia-smi"
    exe.write_text(FAKE_SMI)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return exe


def test_fake_nvidia_smi_is_seen_unless_forced_onto_the_cpu(fake_nvidia_smi, monkeypatch):
    monkeypatch.delenv("REPRO_FORCE_CPU", raising=False)
    assert device.detect() == device.LocalGPUs(2, "NVIDIA H100 80GB HBM3", 79.6)
    monkeypatch.setenv("REPRO_FORCE_CPU", "1")
    assert device.detect().count == 0 and not device.has_nvidia_gpu() and not device.cuda_usable()


@pytest.mark.parametrize("text", ["", "garbage", "X, nan", "X, -5", "X, inf", ", 100", "X"])
def test_unexpected_nvidia_smi_output_counts_as_no_gpu(text):
    assert device.parse_nvidia_smi(text).count == 0


def test_noxfile_uses_the_same_rule(fake_nvidia_smi):
    env = {**os.environ, "REPRO_FORCE_CPU": "1"}
    code = "import noxfile; print(noxfile._has_gpu())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    if "No module named 'nox'" in out.stderr:
        pytest.skip("nox is not installed in this environment")
    assert out.stdout.strip() == "False", out.stderr
    del env["REPRO_FORCE_CPU"]
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stderr


@pytest.mark.slow
def test_forced_cpu_with_a_fake_nvidia_smi_runs_the_twin(fake_nvidia_smi, tmp_path):
    """Through the real CLI process: with nvidia-smi on PATH it would plan a GPU run instead."""
    pytest.importorskip("torch", reason="the twin needs the twin extra")
    env = {**os.environ, "REPRO_FORCE_CPU": "1"}
    proc = subprocess.run([str(Path(sys.executable).parent / "repro"), "run", "tulu3-8b-sft", "--out", str(tmp_path),
                           "--quiet"], env=env, capture_output=True, text=True, timeout=600)
    assert "running the scaled-down twin" in proc.stdout, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "manifest.json").read_text())["hardware"]["device"].startswith("cpu")
