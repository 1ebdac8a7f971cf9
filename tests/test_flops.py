"""FLOPs/token: Fast-LLM's own formula reproduces its published and printed TFLOP/s; the
torchtitan dense form is what it says; the peak table is dense and normalises device names."""

from __future__ import annotations

import re

import pytest

from repro.base.errors import ReproError
from repro.verify.flops import (
    LOG_LINE_AGREEMENT_REL,
    PUBLISHED_AGREEMENT_REL,
    active_matmul_params,
    dense_flops_per_token,
    fast_llm_flops_per_token,
    get_model,
    load_models,
    relative_gap,
    tflops_from_tokens,
)
from repro.verify.hardware import ACCELERATORS, mfu, normalize_gpu, peak_flops

MISTRAL = get_model("mistral-7b")
FULL = fast_llm_flops_per_token(MISTRAL, 8192, window=None)
WINDOW = fast_llm_flops_per_token(MISTRAL, 8192, window=4096)


def test_fast_llm_formula_matches_the_worked_numbers():
    # Research §3.2: dense part 4.266e10, attention 6.44e9 (full) / 4.83e9 (w=4096).
    assert FULL == pytest.approx(4.9104814080e10, rel=1e-12)
    assert WINDOW == pytest.approx(4.7494201344e10, rel=1e-12)
    hardware = fast_llm_flops_per_token(MISTRAL, 8192, hardware=True)
    assert hardware - FULL == pytest.approx((FULL - 4.2662e10) / 6, rel=1e-3)  # +1/6 of the attention
    assert fast_llm_flops_per_token(MISTRAL, 8192, training=False) < FULL / 2.9


def test_seed_9000_tokens_is_440_tflops():
    ours = tflops_from_tokens(9000, FULL)
    assert ours == pytest.approx(441.94, abs=0.01)
    assert abs(relative_gap(ours, 440)) < PUBLISHED_AGREEMENT_REL  # +0.44%


@pytest.mark.parametrize("tokens, published", [(4234.09, 202.88), (4218.63, 202.14), (3804.49, 182.29)])
def test_recompute_table_rows_agree(tokens, published):
    windowed = relative_gap(tflops_from_tokens(tokens, WINDOW), published)
    full = relative_gap(tflops_from_tokens(tokens, FULL), published)
    assert windowed == pytest.approx(-0.0088, abs=0.0002)  # every row: the table implies 4.79e10 FLOP/token
    assert full == pytest.approx(0.0248, abs=0.0002)
    assert abs(windowed) < PUBLISHED_AGREEMENT_REL and abs(full) < PUBLISHED_AGREEMENT_REL


def _fast_llm_line(iteration: int, tokens_per_s: float, flops_per_token: float) -> str:
    """A v0.1 Fast-LLM training line (fast_llm/logging.py @1aa6040 field order), numbers printed
    exactly as upstream prints them: model and hardware TFLOP/s from one timer, 2 decimals."""
    model = tokens_per_s * flops_per_token / 1e12
    hw = tokens_per_s * fast_llm_flops_per_token(MISTRAL, 8192, hardware=True) / 1e12
    return (f"Training @ iteration {iteration:6.0f}/500000 | consumed samples: {iteration * 128:12,.0f} | "
            f"consumed tokens: {iteration * 1048576:16,.0f} | batch size: 128 | step time: 932.10 ms | "
            f"throughput: {model:.2f} tflop/s (model) | {hw:.2f} tflop/s (hardware) | {tokens_per_s:.2f} tokens/s/gpu | "
            f"Memory allocated 40,000.00 MiB | learning rate: 1.000e-04 | language model loss: 2.31234")


_THROUGHPUT = re.compile(r"throughput: ([\d.]+) tflop/s \(model\) \| ([\d.]+) tflop/s \(hardware\) \| ([\d.]+) tokens/s/gpu")


@pytest.mark.parametrize("tokens_per_s", [8123.45, 9000.0, 10350.0, 3804.49])
def test_log_line_tokens_and_tflops_agree_through_our_formula(tokens_per_s):
    line = _fast_llm_line(100, tokens_per_s, FULL)
    model, _hw, tps = map(float, _THROUGHPUT.search(line).groups())
    gap = relative_gap(model, tflops_from_tokens(tps, FULL))
    assert abs(gap) < LOG_LINE_AGREEMENT_REL
    assert abs(gap) < 1e-4  # only 2-decimal printing separates them


def test_log_line_printed_with_a_window_does_not_agree_with_the_full_formula():
    """The 1% check is sharp enough to tell the window setting apart (3.3% gap)."""
    line = _fast_llm_line(100, 9000.0, WINDOW)
    model, _hw, tps = map(float, _THROUGHPUT.search(line).groups())
    assert abs(relative_gap(model, tflops_from_tokens(tps, FULL))) > LOG_LINE_AGREEMENT_REL


def test_log_line_through_the_repo_parser_when_available():
    parsers = pytest.importorskip("repro.verify.parsers.fast_llm")
    if not hasattr(parsers, "parse_line"):
        pytest.skip("fast_llm parser has no parse_line")
    rec = parsers.parse_line(_fast_llm_line(100, 9000.0, FULL))
    assert rec is not None and rec.tokens_per_s_per_device == pytest.approx(9000.0)
    gap = relative_gap(rec.model_tflops_per_device, tflops_from_tokens(rec.tokens_per_s_per_device, FULL))
    assert abs(gap) < LOG_LINE_AGREEMENT_REL


def test_fast_llm_formula_refuses_non_dense_models():
    with pytest.raises(ReproError, match="dense transformers only"):
        fast_llm_flops_per_token(get_model("gpt-oss-120b"), 4096)


def test_dense_form_is_torchtitan_6n_plus_attention():
    llama = get_model("llama-3.1-8b")
    n = active_matmul_params(llama)
    # 32 layers x (q,k,v,o 4096*128*(64+16) + MLP 3*4096*14336) + LM head 4096*128256; embedding excluded.
    assert n == 32 * (4096 * 128 * 80 + 3 * 4096 * 14336) + 4096 * 128256
    assert dense_flops_per_token(llama, 4096) == 6 * n + 6 * 32 * 32 * (128 + 128) * 4096
    assert dense_flops_per_token(llama, 8192) - dense_flops_per_token(llama, 4096) == 12 * 32 * 32 * 128 * 4096


def test_dense_form_windows_and_moe():
    mistral_4k = dense_flops_per_token(MISTRAL, 4096)
    assert dense_flops_per_token(MISTRAL, 32768) == mistral_4k  # sliding window caps attention at 4096
    oss = get_model("gpt-oss-120b")
    active = active_matmul_params(oss)
    assert 5.0e9 < active < 5.3e9  # OpenAI: 5.1B active parameters
    small = get_model("granite-4.0-h-small")
    assert 8.5e9 < active_matmul_params(small) < 9.5e9  # IBM: 9B active


def test_every_model_has_a_source_and_unverified_ones_say_why():
    for key, arch in load_models().items():
        assert arch.source
        if not arch.verified:
            assert arch.notes, key


def test_unknown_model():
    with pytest.raises(ReproError, match="unknown model 'gpt-5'"):
        get_model("gpt-5")


# --------------------------------------------------------------------------------------------
# Dense BF16 peaks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, key", [
    ("NVIDIA H100 80GB HBM3", "H100-SXM"), ("NVIDIA H100 PCIe", "H100-PCIe"), ("NVIDIA H100 NVL", "H100-NVL"),
    ("h100-sxm", "H100-SXM"), ("NVIDIA H200", "H200"), ("NVIDIA A100-SXM4-80GB", "A100"),
    ("NVIDIA A100-PCIE-40GB", "A100"), ("NVIDIA L40S", "L40S"), ("NVIDIA L40", "L40"), ("NVIDIA L4", "L4"), ("NVIDIA A10G", "A10G"),
    ("NVIDIA A10", "A10"), ("NVIDIA B200", "B200"), ("AMD Instinct MI300X", "MI300X"), ("nonsense", None), ("", None),
])
def test_gpu_names_normalise(name, key):
    assert normalize_gpu(name) == key


def test_peaks_are_dense_not_sparse():
    assert peak_flops("H100-SXM") == 989e12
    assert peak_flops("H100-PCIe") == 756e12
    assert peak_flops("H100-NVL") == 835e12
    assert peak_flops("H200") == 989e12
    assert peak_flops("A100") == 312e12
    assert peak_flops("L40S") == 362e12
    assert peak_flops("B200") == 2.25e15
    assert peak_flops("MI300X") == 1.3e15
    for acc in ACCELERATORS:
        assert acc.source
        assert acc.peak_bf16_dense < 2.6e15  # no sparsity figure (H100 sparse would be 1.979e15, B200 4.5e15)
    assert mfu(440e12, "H100-SXM") == pytest.approx(0.4449, abs=1e-4)


def test_unknown_gpu_peak_is_an_error_not_a_fallback():
    with pytest.raises(ReproError, match="unknown GPU 'Z9000'"):
        peak_flops("Z9000")
