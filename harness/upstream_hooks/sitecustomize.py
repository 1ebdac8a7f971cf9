"""Declared launcher-side hooks for the REAL upstream at twin scale (`repro run ID --scale upstream`).

This folder goes first on the upstream child's PYTHONPATH only when the recipe's twin.upstream.cpu_changes name a
hook (`hooks: [...]`); REPRO_UPSTREAM_HOOKS lists them. Python imports `sitecustomize` at start-up in every process
(the launcher and each rank): nothing is patched until the hooked module is imported, then each named hook is
applied to it once, and each says so on stderr the first time it changes a call (map_shard_seed: in the forked
worker of shard 0).

One mechanism for every change inside the upstream's processes: Python imports only one `sitecustomize`, so the
hooks live in this one file and any of them combine in one process.

Why hooks and not an edited upstream: the upstream runs from its pinned checkout byte for byte (ToolGen has no
license: its code is never copied here); a hook is a named change, declared with its reason in the recipe and
recorded in the run's manifest. Imports nothing of repro (the upstream's environment has no repro).
"""

from __future__ import annotations

import functools
import importlib.abc
import os
import sys

HOOKS_ENV = "REPRO_UPSTREAM_HOOKS"
SEED_ENV = "REPRO_UPSTREAM_SEED"
_said: set[str] = set()


def _say(hook: str, text: str) -> None:
    if hook not in _said:
        _said.add(hook)
        print(f"[repro upstream hook {hook}] {text}", file=sys.stderr, flush=True)


def fp32_weights(modeling_utils) -> None:
    """from_pretrained(torch_dtype=bfloat16 | float16) loads float32 instead: the upstream hard-codes a half dtype,
    the twin trains in float32 on a CPU, and only fp32 on both sides makes twin vs upstream a reduction-order
    figure instead of bf16 rounding."""
    import torch

    cls = modeling_utils.PreTrainedModel
    original = cls.from_pretrained.__func__
    half = (torch.bfloat16, torch.float16, "bfloat16", "float16")

    @functools.wraps(original)
    def from_pretrained(klass, *args, **kwargs):
        for key in ("torch_dtype", "dtype"):
            if any(kwargs.get(key) is h or kwargs.get(key) == h for h in half):
                _say("fp32_weights", f"from_pretrained({key}={kwargs[key]}) -> torch.float32")
                kwargs[key] = torch.float32
        return original(klass, *args, **kwargs)

    cls.from_pretrained = classmethod(from_pretrained)


def seed_before_resize(modeling_utils) -> None:
    """resize_token_embeddings first calls transformers.set_seed(REPRO_UPSTREAM_SEED): the new rows it draws
    (mean_resizing) are then the twin's, which seeds with its --seed before the resize; unseeded, every run draws
    other rows and no reference could be recorded."""
    cls = modeling_utils.PreTrainedModel
    original = cls.resize_token_embeddings
    seed = int(os.environ[SEED_ENV])

    @functools.wraps(original)
    def resize_token_embeddings(self, *args, **kwargs):
        from transformers import set_seed

        _say("seed_before_resize", f"transformers.set_seed({seed}) before resize_token_embeddings")
        set_seed(seed)
        return original(self, *args, **kwargs)

    cls.resize_token_embeddings = resize_token_embeddings


def cuda_mem_get_info_zero(cuda) -> None:
    """torch.cuda.mem_get_info() returns (0, 0) on a machine without CUDA, where it raises ("Found no NVIDIA
    driver"): open-instruct's dpo_tune_cache.py queries free GPU memory for a log line at its start and end, and
    nothing else reads the figure."""
    if cuda.is_available():  # a GPU machine keeps the real query
        return

    def mem_get_info(device=None):
        _say("cuda_mem_get_info_zero", "torch.cuda.mem_get_info() -> (0, 0) (no CUDA device)")
        return (0, 0)

    cuda.mem_get_info = mem_get_info


def map_shard_seed(arrow_dataset) -> None:
    """Each forked datasets map worker seeds Python's `random` by its shard rank, random.seed(rank), at the start of
    each shard it maps (a single, unranked shard: rank 0); the parent process and its own draws are untouched.

    Why: AceRAG's main.train_compressive_encoder maps the ft rows with num_proc=32 and draws each row's compression
    ratio and selected positions from the global `random`; CPython reseeds it from os.urandom in every forked child
    (random.py registers its seed at fork), so the published run draws differently on every run (measured: two
    builds of the same 32 rows in the pinned environment differ). The twin seeds shard r the same way
    (harness/acerag/train.py forked_map), so the upstream at twin scale is reproducible and compared with the twin on
    the same draws. Only the seed of the draws changes; which rows, how many draws and what is drawn stay upstream's.
    """
    os.register_at_fork(after_in_child=functools.partial(_seed_each_shard, arrow_dataset))


def _seed_each_shard(arrow_dataset) -> None:
    import random

    inner = arrow_dataset.Dataset.__dict__["_map_single"]
    inner = getattr(inner, "__func__", inner)
    if getattr(inner, "_seeded_by_rank", False):  # a child of a child: patched once
        return

    def _map_single(*args, **kwargs):
        rank = kwargs.get("rank") or 0  # a single shard has no rank: shard 0
        if rank == 0:
            _say("map_shard_seed", "datasets map shard r in a forked worker starts from random.seed(r)")
        random.seed(rank)
        yield from inner(*args, **kwargs)

    _map_single._seeded_by_rank = True
    arrow_dataset.Dataset._map_single = staticmethod(_map_single)


def mxfp4_dequant_fp32(mxfp4) -> None:
    """transformers' MXFP4 experts are dequantized to float32, not bfloat16.

    transformers 4.55.4 (the fms-hf-tuning-3.2.2 environment) dequantizes an MXFP4 checkpoint with
    integrations/mxfp4.py convert_moe_packed_tensors(..., dtype=torch.bfloat16) and keeps the experts in bfloat16
    whatever --torch_dtype says; in the twin's float32 run the first expert matmul then fails
    (modeling_gpt_oss.py:105 "expected m1 and m2 to have the same dtype, but got: float != c10::BFloat16",
    measured). transformers 5 (the twin's) dequantizes to the parameter's dtype. This hook makes 4.55.4 do the same
    for a float32 run: the decode is unchanged, only its output dtype; every MXFP4 value (E2M1 x 2^k) is exact in
    both."""
    import torch

    fp32 = functools.partial(mxfp4.convert_moe_packed_tensors, dtype=torch.float32)

    @functools.wraps(mxfp4.convert_moe_packed_tensors)
    def convert_moe_packed_tensors(*args, **kwargs):
        _say("mxfp4_dequant_fp32", "convert_moe_packed_tensors(dtype=torch.float32)")
        return fp32(*args, **kwargs)

    mxfp4.convert_moe_packed_tensors = convert_moe_packed_tensors


#: hook name -> (the module it patches once imported, the patch); the names repro.catalog.twin_schema accepts
HOOKS = {
    "fp32_weights": ("transformers.modeling_utils", fp32_weights),
    "seed_before_resize": ("transformers.modeling_utils", seed_before_resize),
    "cuda_mem_get_info_zero": ("torch.cuda", cuda_mem_get_info_zero),
    "map_shard_seed": ("datasets.arrow_dataset", map_shard_seed),
    "mxfp4_dequant_fp32": ("transformers.integrations.mxfp4", mxfp4_dequant_fp32),
}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs the hooks of a module right after the module itself has executed (a post-import hook)."""

    def __init__(self, pending: dict[str, list]):
        self.pending = pending

    def find_spec(self, name, path=None, target=None):
        if name not in self.pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        hooks = self.pending.pop(name)
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            for hook in hooks:
                hook(module)

        spec.loader.exec_module = exec_module
        return spec


def install(names: list[str]) -> None:
    pending: dict[str, list] = {}
    for name in names:
        if name not in HOOKS:
            raise SystemExit(f"{HOOKS_ENV}: unknown hook {name!r} (known: {', '.join(HOOKS)})")
        module, hook = HOOKS[name]
        pending.setdefault(module, []).append(hook)
    if "seed_before_resize" in names and not os.environ.get(SEED_ENV, "").isdigit():
        raise SystemExit(f"{HOOKS_ENV}: seed_before_resize needs {SEED_ENV} (the twin's --seed)")
    for module, hooks in pending.items():
        if module in sys.modules:  # imported already (never at start-up): apply now
            for hook in hooks:
                hook(sys.modules[module])
            pending[module] = []
    sys.meta_path.insert(0, _AfterImport({m: h for m, h in pending.items() if h}))


_names = [n for n in os.environ.get(HOOKS_ENV, "").split(",") if n]
if _names:
    install(_names)
