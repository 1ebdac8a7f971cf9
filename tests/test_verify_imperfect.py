"""verify on imperfect logs: glitches are skipped and reported, corrupt steps are bad lines, a twin's
own metrics are not compared with the published run, NeoX/Megatron-DeepSpeed lines parse, the peak
table covers common GPUs and the HTML report links and wraps its sources."""

from __future__ import annotations

import json
import math

import pytest

from repro.cli import main
from repro.base.metrics import MetricRecord
from repro.verify.checks import FAIL, PASS
from repro.verify.parsers import parse_files
from repro.verify.verifier import drop_glitches, verify

SFT = "tulu3-8b-sft"  # peak-lr 5e-6 after a linear warm-up


def lr_run(nan_at: set[int] = frozenset(), n: int = 60) -> list[MetricRecord]:
    recs = []
    for s in range(1, n):
        lr = 5e-6 * min(1.0, s / 10) * (1 - 0.001 * max(0, s - 10))
        recs.append(MetricRecord(step=s, loss=2.0 - 0.001 * s, lr=math.nan if s in nan_at else lr))
    return recs


def status(result, claim):
    return next(r for r in result.results if r.claim_id == claim)


@pytest.mark.parametrize("where", [{3}, {10}, {21}, {5, 30, 31}])
def test_one_nan_is_left_out_reported_and_the_rest_measured(where):
    clean = status(verify(SFT, [lr_run()]), "peak-lr")
    glitch = status(verify(SFT, [lr_run(where)]), "peak-lr")
    assert clean.status == PASS
    assert glitch.status == PASS and glitch.check.measured == pytest.approx(clean.check.measured, rel=1e-2)
    assert any("non-finite" in w and str(min(where)) in w for w in glitch.check.warnings)


def test_trailing_nan_is_still_divergence():
    records = [MetricRecord(step=1, loss=0.8), MetricRecord(step=2, loss=0.7), MetricRecord(step=3, loss=math.nan)]
    kept, skipped = drop_glitches([(r.step, r.loss) for r in records])
    assert skipped == () and math.isnan(kept[-1][1])
    diverged = verify("fms-granite4-h-tiny-cp8-ebs4-s8192-gas1", [records])
    assert status(diverged, "loss").status == FAIL


def test_negative_and_absurd_steps_are_bad_lines_not_restarts(tmp_path):
    log = tmp_path / "metrics.jsonl"
    steps = [1, 2, 3, -4, 5, 99_999_999, 7, 8, 10**15, 9, 10]
    log.write_text("".join(json.dumps({"step": s, "phase": "train", "loss": 2.0}) + "\n" for s in steps))
    result = parse_files([log])
    assert [r.step for r in result.records] == [1, 2, 3, 5, 7, 8, 9, 10]
    kinds = [i.kind for i in result.issues]
    assert kinds.count("bad_step") == 3 and "restart" not in kinds


def test_a_real_restart_is_still_a_restart(tmp_path):
    log = tmp_path / "metrics.jsonl"
    steps = [1, 2, 3, 4, 5, 3, 4, 5, 6]
    log.write_text("".join(json.dumps({"step": s, "phase": "train", "loss": 2.0 + s}) + "\n" for s in steps))
    kinds = [i.kind for i in parse_files([log]).issues]
    assert "restart" in kinds and "bad_step" not in kinds


def test_a_twins_own_metrics_are_not_checked_against_the_published_run(capsys, tmp_path):
    out = tmp_path / "run"
    metrics = out / "train" / "open_instruct_sft" / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    metrics.write_text("".join(json.dumps({"step": s, "phase": "train", "loss": 2.0, "lr": 1e-3}) + "\n"
                               for s in range(1, 9)))
    (out / "manifest.json").write_text(json.dumps({"scale": "twin", "recipe": SFT}))
    assert main(["verify", SFT, str(metrics)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "twin" in err and "do not apply" in err and str(out / "verdict.json") in err
    (out / "manifest.json").write_text(json.dumps({"scale": "full", "recipe": SFT}))
    assert main(["verify", SFT, str(metrics)]) in (0, 1)  # a full run's metrics are verified as usual


MEGATRON_DS = (
    "[2024-01-01 10:00:00,000] [INFO] [logging.py:96:log_dist] [Rank 0] step=10, skipped=0, lr=[5.9e-05, 5.9e-05], "
    "mom=[(0.9, 0.95), (0.9, 0.95)]\n"
    " iteration       10/  292968 | consumed samples:         1280 | consumed tokens:      2621440 | elapsed time per "
    "iteration (ms): 1234.5 | learning rate: 5.900E-05 | global batch size:   128 | lm loss: 7.123456E+00 | loss scale: "
    "4096.0 | grad norm: 1.234 | actual seqlen:  2048 | number of skipped iterations:   0 | number of nan iterations:"
    "   0 | samples per second: 103.685 | tokens per gpu per second (tgs): 3318.0 | TFLOPs: 145.20 |\n"
)
NEOX = (
    "[2024-01-01 10:00:00,000] [INFO] [logging.py:60:log_dist] [Rank 0] step=10, skipped=0, lr=[5.9e-05, 5.9e-05], "
    "mom=[[0.9, 0.95], [0.9, 0.95]]\n"
    " samples/sec: 30.123 | iteration       10/  320000 | elapsed time per iteration (ms): 4250.5 | learning rate: "
    "5.900E-05 | approx flops per GPU: 120.3TFLOPS | lm_loss: 6.523456E+00 | loss scale: 65536.0 | number of skipped "
    "iterations:   0 | number of nan iterations:   0 |\n"
)


@pytest.mark.parametrize("text,loss,extra", [(MEGATRON_DS, 7.123456, ("tflops", 145.2)),
                                             (NEOX, 6.523456, ("approx_tflops_per_gpu", 120.3))])
def test_iteration_lines_of_megatron_deepspeed_and_neox_are_read(tmp_path, text, loss, extra):
    log = tmp_path / "train.log"
    log.write_text(text)
    result = parse_files([log])
    assert result.format[str(log)] == "megatron_stdout"
    rec = result.records[0]
    assert rec.step == 10 and rec.loss == pytest.approx(loss) and rec.lr == pytest.approx(5.9e-5)
    assert rec.extra[extra[0]] == pytest.approx(extra[1])


def test_common_gpus_have_sourced_peaks():
    from repro.verify.hardware import accelerator, normalize_gpu

    for name, key in [("Tesla V100-SXM2-16GB", "V100"), ("Tesla V100-PCIE-32GB", "V100-PCIe"), ("Tesla T4", "T4"),
                      ("NVIDIA L4", "L4"), ("NVIDIA A10", "A10"), ("NVIDIA A100-SXM4-80GB", "A100")]:
        assert normalize_gpu(name) == key, name
        assert accelerator(key).source
    assert normalize_gpu("NVIDIA GeForce RTX 4090") is None  # no guess


def test_html_sources_wrap_and_link():
    from repro.report.verification import _CSS, render_html, source_html

    assert "overflow-wrap:anywhere" in _CSS
    sha = "30d11b4fb9e363f32214e484aeac86ded419a9ef"
    linked = source_html(f"allenai/open-instruct/docs/tulu3.md@{sha} L10-L20")
    assert f'href="https://github.com/allenai/open-instruct/blob/{sha}/docs/tulu3.md#L10-L20"' in linked
    assert '<a href="https://arxiv.org/abs/2411.15124">' in source_html("paper https://arxiv.org/abs/2411.15124, Table 5")
    assert "<script>" not in source_html("<script>alert(1)</script>")
    page = render_html(verify(SFT, [lr_run()]), 1)
    assert '<td class="src">' in page and "<a href=" in page
