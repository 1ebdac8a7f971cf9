"""tools/gpu-check.sh: it parses (bash -n), passes ShellCheck, refuses without a GPU, and on a (stubbed) GPU
machine installs without the CPU constraints, tries flash-attn as a wheel only, and hands the lane its budget."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "gpu-check.sh"


def test_script_parses_with_bash_n():
    if shutil.which("bash") is None:
        pytest.skip("no bash on PATH")
    r = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_script_passes_shellcheck():
    from tests import debian_tools

    why = debian_tools.require("shellcheck")  # apt-get install -y shellcheck as root with apt, else the reason
    if why:
        pytest.skip(f"no shellcheck here: {why}")
    r = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _exe(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _env(bin_dir: Path, **extra) -> dict:
    base = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(bin_dir)}
    base.update(extra)
    return base


def test_refuses_in_one_line_without_a_gpu(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    r = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "res")], capture_output=True, text=True,
                       env=_env(empty))
    assert r.returncode != 0
    assert r.stdout.strip().count("\n") == 0 and "no nvidia-smi" in r.stdout
    assert "no nvidia-smi" in (tmp_path / "res" / "gpu-check.log").read_text()


def test_stubbed_gpu_machine_install_and_lane_call(tmp_path):
    """Stubs stand in for nvidia-smi, python3 and the venv's python; they log every call. The script must
    install torch and the project's extras without constraints-cpu.txt, try flash-attn with --only-binary,
    skip it with a line when that fails, and pass the lane's exit status (here 3) through."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    venv = tmp_path / "venv"
    _exe(bin_dir / "nvidia-smi", 'echo "NVIDIA H200, 143771 MiB"\n')
    vpy = ("echo \"$*\" >> " + str(calls) + "\n"
           'case "$*" in *flash-attn*) exit 1;; *"repro.cli gpu-ci"*) echo lane-ran; exit 3;; esac\nexit 0\n')
    _exe(bin_dir / "python3", f'mkdir -p "{venv}/bin"\ncat > "{venv}/bin/python" <<\'EOS\'\n#!/usr/bin/env bash\n'
         f'{vpy}EOS\nchmod +x "{venv}/bin/python"\n')
    res = tmp_path / "res"
    r = subprocess.run(["bash", str(SCRIPT), str(res)], capture_output=True, text=True, timeout=60,
                       env=_env(bin_dir, GPU_CHECK_VENV=str(venv), GPU_CHECK_BUDGET_S="400",
                                GPU_CHECK_TWIN_LIMIT_S="77"))
    assert r.returncode == 3, r.stdout + r.stderr
    lines = calls.read_text().splitlines()
    installs = [ln for ln in lines if ln.startswith("-m pip install")]
    assert any(ln.endswith(f"-e {ROOT}[twin,verify,test]") for ln in installs)
    assert not any("constraints-cpu" in ln for ln in lines)
    assert any("--only-binary=:all: flash-attn" in ln for ln in installs)
    lane = [ln for ln in lines if "repro.cli gpu-ci" in ln]
    assert len(lane) == 1 and f"--out {res}" in lane[0] and "--time-limit 77" in lane[0]
    assert lane[0].endswith("--upstream")  # the CUDA-only upstream references after the twins
    probe = [ln for ln in lines if "shared_probe.py" in ln]
    assert len(probe) == 1 and probe[0].startswith("-m torch.distributed.run --nproc_per_node 2")
    assert lines.index(probe[0]) < lines.index(lane[0])  # the probe runs before the lane
    assert any(ln.endswith("install --disable-pip-version-check -q uv") for ln in installs)
    budget = int(lane[0].split("--budget ")[1].split()[0])
    assert 300 <= budget <= 385  # 400 s minus the (instant) install minus the 15 s margin
    log = (res / "gpu-check.log").read_text()
    assert "flash-attn: no wheel" in log and "vllm: skipped" in log and "exit 3" in log
    assert "lane-ran" in (res / "gpu-ci.log").read_text()
    assert (res / "nvidia-smi.txt").read_text().startswith("NVIDIA H200")


def test_upstream_references_can_be_left_out(tmp_path):
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    venv = tmp_path / "venv"
    _exe(bin_dir / "nvidia-smi", 'echo "NVIDIA H100, 81559 MiB"\n')
    _exe(bin_dir / "python3", f'mkdir -p "{venv}/bin"\nprintf "#!/usr/bin/env bash\\necho \\"\\$*\\" >> {calls}\\n'
         f'exit 0\\n" > "{venv}/bin/python"\nchmod +x "{venv}/bin/python"\n')
    r = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "res")], capture_output=True, text=True, timeout=60,
                       env=_env(bin_dir, GPU_CHECK_VENV=str(venv), GPU_CHECK_UPSTREAM="0"))
    assert r.returncode == 0, r.stdout + r.stderr
    lane = [ln for ln in calls.read_text().splitlines() if "repro.cli gpu-ci" in ln]
    assert len(lane) == 1 and "--upstream" not in lane[0] and "upstream references: skipped" in r.stdout


def test_no_time_left_for_twins_fails(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    venv = tmp_path / "venv"
    _exe(bin_dir / "nvidia-smi", 'echo "NVIDIA H200, 143771 MiB"\n')
    _exe(bin_dir / "python3", f'mkdir -p "{venv}/bin"\nprintf "#!/usr/bin/env bash\\nexit 0\\n" > "{venv}/bin/python"\n'
         f'chmod +x "{venv}/bin/python"\n')
    r = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "res")], capture_output=True, text=True, timeout=60,
                       env=_env(bin_dir, GPU_CHECK_VENV=str(venv), GPU_CHECK_BUDGET_S="20"))
    assert r.returncode == 1 and "no time left for twins" in r.stdout
    assert not os.path.exists(tmp_path / "res" / "gpu-ci.log")
