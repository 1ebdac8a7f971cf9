"""MXFP4 (OCP microscaling, E2M1 elements, E8M0 shared scale per 32 values) as gpt-oss checkpoints store it.

transformers cannot *quantize* to MXFP4 on CPU (it needs Triton and a hub kernel), but it loads a
pre-quantized checkpoint and dequantizes it. So the twin writes its tiny gpt-oss checkpoint itself:
``<param>_blocks`` uint8 ``[..., rows, cols/32, 16]`` (two E2M1 codes per byte, even column in the low
nibble) and ``<param>_scales`` uint8 ``[..., rows, cols/32]`` (E8M0: the power of two biased by 127),
where the stored matrix is the parameter with its last two axes swapped (gpt-oss keeps experts as
``[E, in, out]`` and the checkpoint as ``[E, out, in]``).

Quantization is round-to-nearest-even onto the E2M1 grid after dividing by the block scale
``2**(floor(log2(amax)) - 2)`` (OCP MX v1.0: the largest element exponent of E2M1 is 2), saturating
at +-6. Values already on a block's grid survive unchanged, so ``quantize(decode(q)) == q``.
Pure numpy: the tests compare this decode with transformers' own.
"""

from __future__ import annotations

import numpy as np

BLOCK = 32
E2M1_MAX = 6.0
E2M1_EMAX = 2
SCALE_BIAS = 127
# code -> value for the 4-bit E2M1 element (bit 3 is the sign)
E2M1_VALUES = np.array(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=np.float64
)
_POS = E2M1_VALUES[:8]


def _round_to_grid(x: np.ndarray) -> np.ndarray:
    """Codes 0..7 of the nearest non-negative E2M1 value; ties go to the even code (even mantissa)."""
    x = np.minimum(x, E2M1_MAX)
    dist = np.abs(x[..., None] - _POS)
    best = dist.min(axis=-1, keepdims=True)
    ties = np.isclose(dist, best, rtol=0, atol=0)
    # among tied candidates prefer the even code (mantissa bit 0), as IEEE round-half-to-even does
    pref = np.where(ties, np.where(np.arange(8) % 2 == 0, 0, 1), 2)
    return pref.argmin(axis=-1).astype(np.uint8)


def block_exponents(blocks: np.ndarray) -> np.ndarray:
    """Shared unbiased exponent per block: floor(log2(amax)) - 2, clamped to E8M0's range (amax 0 -> -127)."""
    amax = np.abs(blocks).max(axis=-1)
    with np.errstate(divide="ignore"):
        exp = np.where(amax > 0, np.floor(np.log2(np.where(amax > 0, amax, 1.0))) - E2M1_EMAX, -SCALE_BIAS)
    return np.clip(exp, -SCALE_BIAS, SCALE_BIAS).astype(np.int32)


def quantize(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[..., rows, cols]`` float -> (blocks uint8 ``[..., rows, cols/32, 16]``, scales uint8 ``[..., rows, cols/32]``)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape[-1] % BLOCK:
        raise ValueError(f"MXFP4 needs the last axis to be a multiple of {BLOCK}, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("MXFP4 cannot encode NaN or inf")
    grouped = m.reshape(*m.shape[:-1], m.shape[-1] // BLOCK, BLOCK)
    exp = block_exponents(grouped)
    scaled = grouped / np.ldexp(1.0, exp)[..., None]
    codes = _round_to_grid(np.abs(scaled)) | np.where(np.signbit(scaled), 8, 0).astype(np.uint8)
    packed = (codes[..., 0::2] & 0x0F) | (codes[..., 1::2] << 4)
    return packed.astype(np.uint8), (exp + SCALE_BIAS).astype(np.uint8)


def decode(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The inverse layout: (blocks, scales) -> ``[..., rows, cols]`` float32."""
    blocks = np.asarray(blocks, dtype=np.uint8)
    scales = np.asarray(scales, dtype=np.uint8)
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BLOCK // 2:
        raise ValueError(f"blocks {blocks.shape} and scales {scales.shape} are not an MXFP4 pair")
    codes = np.empty((*blocks.shape[:-1], BLOCK), dtype=np.uint8)
    codes[..., 0::2] = blocks & 0x0F
    codes[..., 1::2] = blocks >> 4
    values = E2M1_VALUES[codes] * np.ldexp(1.0, scales.astype(np.int32) - SCALE_BIAS)[..., None]
    return values.reshape(*blocks.shape[:-2], blocks.shape[-2] * BLOCK).astype(np.float32)


def quantize_param(param: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """gpt-oss expert parameter ``[E, in, out]`` -> checkpoint (blocks, scales) of its ``[E, out, in]`` transpose."""
    return quantize(np.swapaxes(np.asarray(param), -1, -2))


def decode_param(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Checkpoint (blocks, scales) -> the expert parameter ``[E, in, out]`` transformers loads."""
    return np.swapaxes(decode(blocks, scales), -1, -2)


def snap(param: np.ndarray) -> np.ndarray:
    """The parameter as MXFP4 can hold it (quantize then decode), float32."""
    return decode_param(*quantize_param(param))
