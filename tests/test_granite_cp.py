"""Context parallelism for the Granite-4.0-H twins: layout rules (fast) and CP == one process (slow, torchrun+gloo).

The slow tests launch ``harness.granite_cp.check`` under real torchrun with 2 and 4 gloo processes; every CP
case must match the one-process run to float tolerance, and every negative control (attention inside the own
chunk, as torch's CPU ``context_parallel`` silently does; Mamba without state passing) must fail that match.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="context parallelism needs torch")
pytest.importorskip("transformers", reason="the Granite hybrid model needs transformers")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.granite_cp import layout as L  # noqa: E402
from harness.granite_cp.mamba_cp import check_plugin_config  # noqa: E402
from harness.granite_cp.ring_attention import check_torch_ring_api  # noqa: E402
from repro.base.errors import ReproError  # noqa: E402

#: CP vs one process, relative to the reference's magnitude (fp32; measured <= 1.6e-6).
MATCH = 1e-4
#: A negative control must be off by more than this somewhere (measured >= 0.16 on gradients).
MISMATCH = 1e-2


def test_layout_cp_inner_and_groups():
    lay = L.make_layout(4, 2)
    assert (lay.cp, lay.dp) == (2, 2)
    assert [lay.cp_rank(r) for r in range(4)] == [0, 1, 0, 1]
    assert [lay.dp_rank(r) for r in range(4)] == [0, 0, 1, 1]
    assert lay.cp_groups() == [[0, 1], [2, 3]]
    assert lay.dp_groups() == [[0, 2], [1, 3]]


@pytest.mark.parametrize(
    "world,cp,dp,needle",
    [(8, 4, 4, "cp 4 x dp 4 = 16 does not equal the world size 8"), (6, 4, None, "not divisible by cp degree 4"),
     (4, 0, None, "positive integer")],
)
def test_layout_errors_are_one_line(world, cp, dp, needle):
    with pytest.raises(ReproError) as err:
        L.make_layout(world, cp, dp)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_seq_len_rules():
    assert L.check_seq_len(64, 8) == 8
    assert L.check_seq_len(63, 1) == 63
    with pytest.raises(ReproError, match="does not divide into 8 equal chunks"):
        L.check_seq_len(60, 8)
    with pytest.raises(ReproError, match="shorter than the Mamba conv state"):
        L.check_seq_len(8, 4, d_conv=4)
    assert L.shard_bounds(12, 3, 2) == (8, 12)


def test_prepare_cp_batch_shifts_before_sharding():
    ids = torch.arange(8).view(1, 8)
    labels = ids.clone()
    labels[0, :2] = -100
    shards = [L.prepare_cp_batch({"input_ids": ids, "labels": labels}, 2, r) for r in range(2)]
    # The label of chunk 0's last token is chunk 1's first token: kept only because the shift comes first.
    assert shards[0]["shift_labels"].tolist() == [[-100, 2, 3, 4]]
    assert shards[1]["shift_labels"].tolist() == [[5, 6, 7, -100]]
    assert shards[1]["position_ids"].tolist() == [[4, 5, 6, 7]]
    assert shards[1]["input_ids"].tolist() == [[4, 5, 6, 7]]
    whole = L.prepare_cp_batch({"input_ids": ids, "labels": labels}, 1, 0)
    assert torch.equal(torch.cat([s["shift_labels"] for s in shards], 1), whole["shift_labels"])


def test_plugin_fixed_mamba_shapes_refused_in_one_line():
    from harness.granite_cp.check import tiny_config

    check_plugin_config(tiny_config())
    bad = tiny_config()
    bad.mamba_d_state = 64
    with pytest.raises(ReproError, match="mamba_d_state=128"):
        check_plugin_config(bad)


def test_torch_ring_api_is_the_pinned_one():
    check_torch_ring_api()


def _torchrun(nproc: int, layouts: str, cases: str, out: Path) -> dict:
    exe = Path(sys.executable).with_name("torchrun")
    torchrun = str(exe) if exe.exists() else shutil.which("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [torchrun, "--nproc_per_node", str(nproc), "--master_port", str(29600 + nproc), "-m",
           "harness.granite_cp.check", "--layouts", layouts, "--cases", cases, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def _assert_parity(results: dict) -> None:
    for key, diffs in results.items():
        values = {k: v for k, v in diffs.items() if not k.endswith("_ref")}
        if "local" in key.split("/")[1]:
            assert max(values.values()) > MISMATCH, f"negative control {key} matched: {values}"
        else:
            assert max(values.values()) < MATCH, f"{key} differs from one process: {values}"


@pytest.mark.slow
def test_cp2_equals_one_process(tmp_path):
    cases = ("attention,attention_local,mamba_allgather,mamba_serial,mamba_allgather_recompute,mamba_local,"
             "model,model_local_attention,model_local_mamba")
    results = _torchrun(2, "cp2", cases, tmp_path / "cp2.json")
    assert len(results) == 9
    _assert_parity(results)


@pytest.mark.slow
def test_cp4_and_cp2xdp2_equal_one_process(tmp_path):
    cases = "attention,attention_local,mamba_allgather,mamba_serial,mamba_local,model,model_local_attention"
    results = _torchrun(4, "cp2xdp2,cp4", cases, tmp_path / "cp4.json")
    assert len(results) == 14
    _assert_parity(results)
