"""sitecustomize for fms 3.2.2 on gpt-oss at twin scale: MXFP4 experts dequantized to float32, not bfloat16.

transformers 4.55.4 (the fms-hf-tuning-3.2.2 environment) dequantizes an MXFP4 checkpoint with
integrations/mxfp4.py convert_moe_packed_tensors(..., dtype=torch.bfloat16) and keeps the experts in bfloat16
whatever --torch_dtype says; in the twin's float32 run the first expert matmul then fails
(modeling_gpt_oss.py:105 "expected m1 and m2 to have the same dtype, but got: float != c10::BFloat16", measured).
transformers 5 (the twin's) dequantizes to the parameter's dtype. This shim makes 4.55.4 do the same for a
float32 run: the decode is unchanged, only its output dtype; every MXFP4 value (E2M1 x 2^k) is exact in both.

Lazy: nothing is imported until transformers itself imports the module (a meta-path hook), so the launcher and
every other import behave as without the shim.
"""

import functools
import importlib.abc
import importlib.util
import sys

TARGET = "transformers.integrations.mxfp4"


def _patch(module) -> None:
    import torch

    module.convert_moe_packed_tensors = functools.partial(module.convert_moe_packed_tensors, dtype=torch.float32)


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)  # one module, once: the real finders locate it
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Hook())
