"""The Slurm lane: a real single-host Slurm cluster, a twin submitted with `repro submit --scale twin`,
and its verdict equal to the same twin run locally. Installs slurm-wlm and munge with apt when they are
missing (root with apt-get, as CI runs), skips with the reason otherwise; stops the daemons it started."""

import contextlib
import io
import json
import os
import threading

import pytest

from repro.cli import main
from repro.base.metrics import read_jsonl
from tests import debian_tools, slurm_cluster

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
RECIPE = "tulu3-8b-sft"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    pytest.importorskip("torch", reason="the twin needs torch")
    why = debian_tools.require("slurmctld", "slurmd", "munged", "sbatch", "scontrol", "sinfo")
    if why:
        pytest.skip(f"no Slurm here: {why}")
    c = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    yield c
    c.stop()


def _verdict(path):
    data = json.loads(path.read_text())
    return data["passed"], [(c["name"], c["status"], c["measured"]) for c in data["checks"]]


def test_twin_submitted_to_slurm_equals_the_local_twin(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["submit", RECIPE, "--scale", "twin", "--time", "10:00", "--out", str(on_slurm)]) == 0
    job = out.getvalue().strip().splitlines()[-1]
    assert job.isdigit(), out.getvalue()
    # the local twin runs while the job does: the results cannot depend on timing
    local_rc: list[int] = []
    worker = threading.Thread(target=lambda: local_rc.append(
        main(["run", RECIPE, "--scale", "twin", "--out", str(local), "--quiet"])))
    worker.start()
    state = cluster.wait(job, timeout_s=240)
    worker.join()
    slurm_out = "\n".join(p.read_text(errors="replace")[-2000:] for p in on_slurm.glob("slurm-*.out"))
    assert state == "COMPLETED", f"job {job} ended {state}\n{slurm_out}\n{cluster.logs()}"
    assert local_rc == [0]
    assert (on_slurm / "job.sbatch").is_file() and "srun --nodes=1" in (on_slurm / "job.sbatch").read_text()
    assert _verdict(on_slurm / "verdict.json") == _verdict(local / "verdict.json")
    assert _verdict(on_slurm / "verdict.json")[0] is True
    losses = [[r.loss for r in read_jsonl(d / "train" / "sft_8b" / "metrics.jsonl")] for d in (on_slurm, local)]
    assert len(losses[0]) == 100 and losses[0] == losses[1]
    manifest = json.loads((on_slurm / "manifest.json").read_text())
    assert manifest["recipe"] == RECIPE and os.path.basename(manifest["argv"][0]) == "accelerate"
