"""Dense BF16 peak FLOP/s per accelerator, and the name normalisation that finds the row.

MFU is a ratio against this table, so one wrong row turns every MFU claim on that GPU into
fiction. Three rules follow:

* **Dense only.** NVIDIA datasheets print the 2:4-sparsity figure first (H100 SXM "1,979
  TFLOPS*"); training never runs sparse, so every value here is the dense figure
  (torchtitan's comment: "Specifications are one-half lower without sparsity").
* **Every row has a source**, and ``verified`` says whether the figure was read in that
  source (True) or carried over from a secondary table (False).
* **No fallback.** torchtitan falls back to the A100 figure for an unknown device; a guess
  would be reported as a fact, so :func:`peak_flops` raises instead and the verifier reports
  NOT-MEASURED.

Keys are what users type (``--hardware H100-SXM``) and what expected files store
(``hardware.gpu``); :func:`normalize_gpu` maps the strings ``nvidia-smi`` / ``torch.cuda
.get_device_name()`` print ("NVIDIA H100 80GB HBM3") onto them.
"""

from __future__ import annotations

from dataclasses import dataclass

from repro.base.device import is_cpu  # noqa: F401  (re-exported: the verifier names it here)
from repro.base.errors import ReproError

TORCHTITAN = (
    "pytorch/torchtitan torchtitan/tools/utils.py@02581674d9dbd6bbeb04817a8a4d95bdb4a18a5b "
    "get_peak_flops"
)
NANOCHAT_STYLE = (
    "secondary: the nanochat-style _PEAK_FLOPS_TABLE (adapted from karpathy/nanochat "
    "nanochat/common.py), read in a public copy; NVIDIA datasheet not read"
)


@dataclass(frozen=True)
class Accelerator:
    key: str
    peak_bf16_dense: float  # FLOP/s, dense (no sparsity), BF16 tensor cores
    #: Each entry is a tuple of lower-case substrings that must ALL occur in the device name.
    #: The table is scanned in order and the first match wins, so specific rows come first.
    patterns: tuple[tuple[str, ...], ...]
    source: str
    verified: bool
    note: str = ""


#: Order matters: "gb200" before "b200", "h100"+"nvl" before "h100", "a100" before "a10",
#: "l40s" before "l40" before "l4", "mi300x" before "mi300a", "v100"+"pcie" before "v100".
ACCELERATORS: tuple[Accelerator, ...] = (
    Accelerator("GB200", 2.5e15, (("gb200",), ("grace blackwell",)), NANOCHAT_STYLE, False,
                "per GPU of a GB200 superchip"),
    Accelerator("B200", 2.25e15, (("b200",),), TORCHTITAN, True,
                "torchtitan cites the Blackwell datasheet"),
    Accelerator("H200-NVL", 836e12, (("h200", "nvl"), ("h200", "pcie")), NANOCHAT_STYLE, False),
    Accelerator("H200", 989e12, (("h200",),), TORCHTITAN, True,
                "SXM; same dense BF16 peak as H100 SXM (more and faster HBM, same tensor cores)"),
    Accelerator("H100-NVL", 835e12, (("h100", "nvl"),), TORCHTITAN, True),
    Accelerator("H100-PCIe", 756e12, (("h100", "pcie"),), TORCHTITAN, True),
    Accelerator("H100-SXM", 989e12, (("h100",),), TORCHTITAN, True,
                "any H100 that is not NVL/PCIe, e.g. 'NVIDIA H100 80GB HBM3' (SXM5)"),
    Accelerator("H800", 756e12, (("h800",),), NANOCHAT_STYLE, False),
    Accelerator("A100", 312e12, (("a100",),), TORCHTITAN, True,
                "SXM4 and PCIe, 40 and 80 GB share the dense BF16 peak"),
    Accelerator("A800", 312e12, (("a800",),), NANOCHAT_STYLE, False),
    Accelerator("L40S", 362e12, (("l40s",), ("l40-s",), ("l40 s",)), TORCHTITAN, True),
    Accelerator("L40", 181.05e12, (("l40",),), "NVIDIA L40 datasheet (not read): 362.1 TF is the sparse figure",
                False, "listed so that 'NVIDIA L40' is not mistaken for an L4"),
    Accelerator("L4", 121e12, (("l4",),), NANOCHAT_STYLE, False,
                "datasheet prints 242 TFLOPS with sparsity; 121 is the dense half"),
    Accelerator("A40", 149.7e12, (("a40",),), "NVIDIA A40 datasheet (public copy read): "
                "'Peak BF16 Tensor TFLOPS with FP32 Accumulate 149.7 | 299.4*'", True),
    Accelerator("A30", 165e12, (("a30",),), NANOCHAT_STYLE, False),
    Accelerator("A10G", 70e12, (("a10g",),),
                "secondary: baseten.co 'NVIDIA A10 vs A10G' spec comparison; AWS publishes no "
                "A10G datasheet", False,
                "the A10G trades tensor throughput for CUDA-core clocks; treat MFU on it as approximate"),
    Accelerator("A10", 125e12, (("a10",),), "NVIDIA A10 datasheet (not read; 250 TF is the sparse figure)",
                False),
    Accelerator("V100-PCIe", 112e12, (("v100", "pcie"),),
                "https://www.io-tech.fi/uutinen/nvidia-esitteli-tesla-v100-pci-express-kiihdyttimen-tieteelliseen-laskentaan/ "
                "(secondary, from NVIDIA's V100 PCIe announcement: 112 TFLOPS tensor at ~1370 MHz)", False,
                "Volta has no BF16 tensor cores: this is the FP16 tensor-core peak, the precision V100 trains in"),
    Accelerator("V100", 125e12, (("v100",),),
                "https://developer.nvidia.com/programming-tensor-cores-cuda-9-0 (NVIDIA: 'up to 125 Tensor "
                "TFLOPS'); SXM2", True,
                "Volta has no BF16 tensor cores: this is the FP16 tensor-core peak, the precision V100 trains in; "
                "V100S (130 TF) is not listed separately"),
    Accelerator("T4", 65e12, (("tesla t4",), ("nvidia t4",)),
                "https://sysrqmts.com/en/gpus/nvidia/tesla/t4 (secondary spec table: FP16 65.13 TFLOPS); NVIDIA's "
                "T4 datasheet prints 65 TFLOPS mixed precision (not read)", False,
                "Turing has no BF16 tensor cores: the FP16 tensor-core peak"),
    Accelerator("MI300X", 1.3e15, (("mi300x",), ("mi325x",), ("mi325",)), TORCHTITAN, True,
                "MI325X shares the figure"),
    Accelerator("MI300A", 980.6e12, (("mi300a",),), NANOCHAT_STYLE, False),
    Accelerator("MI250X", 191.5e12, (("mi250x",),), TORCHTITAN, True,
                "per GCD, which is what one torch device is"),
)

_BY_KEY = {acc.key.casefold(): acc for acc in ACCELERATORS}


def known_keys() -> list[str]:
    return [acc.key for acc in ACCELERATORS]


#: The run-hardware key for a CPU (twins): no GPU peak exists, so no rate is comparable with a GPU claim.
CPU = "CPU"


def normalize_gpu(name: str | None) -> str | None:
    """Map any spelling of a GPU ("NVIDIA H100 80GB HBM3", "h100-sxm", "A100-SXM4-80GB") to a key.

    Returns None for None/empty or an unknown device: callers decide whether that is an error
    (a user-typed ``--hardware``) or just "hardware unknown" (a claim that never said).
    """
    if not name or not name.strip():
        return None
    exact = _BY_KEY.get(name.strip().casefold())
    if exact is not None:
        return exact.key
    lowered = name.casefold()
    for acc in ACCELERATORS:
        if any(all(part in lowered for part in pattern) for pattern in acc.patterns):
            return acc.key
    return None


def accelerator(key_or_name: str) -> Accelerator:
    """The table row for a key or device name; one-line ReproError naming the known keys otherwise."""
    key = normalize_gpu(key_or_name)
    if key is None:
        raise ReproError(
            f"unknown GPU '{key_or_name}': known dense-BF16 peaks are {', '.join(known_keys())}"
        )
    return _BY_KEY[key.casefold()]


def peak_flops(key_or_name: str) -> float:
    """Dense BF16 peak FLOP/s (never the sparsity figure)."""
    return accelerator(key_or_name).peak_bf16_dense


def mfu(flops_per_second_per_device: float, key_or_name: str) -> float:
    """Model FLOPs utilisation as a fraction (0.45, not 45)."""
    return flops_per_second_per_device / peak_flops(key_or_name)


def require_gpu(name: str) -> str:
    """The table key for a GPU name, or ValueError listing the known ones (claims and CLI share it)."""
    key = normalize_gpu(name)
    if key is None:
        raise ValueError(f"unknown GPU '{name}' (known: {', '.join(known_keys())})")
    return key
