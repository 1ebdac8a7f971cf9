"""What the fms checks read from the model itself rather than from the parsed flags: the LoRA scaling and
alpha peft applies, and whether the expert weights are the MXFP4 decode (issue 21: a check that echoes a
flag cannot fail on the bug it is written against), and the faults `repro mutate` injects into the fms trainer."""

from __future__ import annotations

from harness.runtime import faults


def measured_lora(peft_model) -> dict:
    """lora_alpha and lora_scaling as the model applies them (peft's per-module scaling and the config it built),
    not as the arguments say: a flag that never reaches peft shows here. NaN when the modules disagree."""
    scalings = {float(v) for m in peft_model.modules() if isinstance(getattr(m, "scaling", None), dict)
                for v in m.scaling.values()}
    alphas = {float(m.lora_alpha[k]) for m in peft_model.modules() if isinstance(getattr(m, "lora_alpha", None), dict)
              for k in m.lora_alpha}
    one = lambda vals: vals.pop() if len(vals) == 1 else float("nan")  # noqa: E731
    return {"lora_alpha": one(alphas), "lora_scaling": one(scalings)}


def perturb_experts(model) -> None:
    """Fault mxfp4_bypassed: expert weights that did not come from the MXFP4 decode (as a loader that read a
    bf16 copy beside the checkpoint would give): every one scaled by 1 + 2**-10, off the MXFP4 grid."""
    import torch

    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(("experts.gate_up_proj", "experts.down_proj")):
                p.mul_(1 + 2 ** -10)


def measured_mxfp4(model) -> int:
    """1 when every MXFP4-stored expert weight (gate_up_proj, down_proj) was loaded as floats lying exactly on
    the MXFP4 grid (what dequantizing the checkpoint gives), else 0: read from the weights, not the flag."""
    import numpy as np

    from harness.fms.mxfp4 import snap  # lazy: numpy and the MXFP4 codec only where a model is MXFP4

    found = [p for n, p in model.named_parameters() if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]
    if not found:
        return 0
    for p in found:
        if not p.dtype.is_floating_point:
            return 0
        w = p.detach().float().cpu().numpy()
        if not np.array_equal(snap(w).astype(np.float32), w):
            return 0
    return 1


def micro_items(batch: dict, n_batches: int) -> float:
    """Fault loss_per_micro_batch (the pre-4.46 accumulation bug): the divisor that makes a micro-batch's loss its
    own token mean divided by the accumulation steps, instead of the window's token sum over all ranks."""
    own = max(int((batch["labels"][:, 1:] != -100).sum()), 1)
    return own * n_batches


def loaded_mxfp4(model) -> int:
    """measured_mxfp4 of the model as loaded (after the mxfp4_bypassed fault, when `repro mutate` injects it)."""
    if faults.fault("mxfp4_bypassed"):
        perturb_experts(model)
    return measured_mxfp4(model)
