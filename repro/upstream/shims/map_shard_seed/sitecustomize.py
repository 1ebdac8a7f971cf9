"""Put first on an upstream run's PYTHONPATH (twin.upstream.shims), never imported by repro: seeds Python's `random`
in each forked datasets map worker by its shard rank, random.seed(rank), at the start of the shard.

Why: AceRAG's main.train_compressive_encoder maps the ft rows with num_proc=32 and draws each row's compression
ratio and selected positions from the global `random`; CPython reseeds it from os.urandom in every forked child
(random.py registers its seed at fork), so the published run draws differently on every run (measured: two builds of
the same 32 rows in the pinned environment differ). The twin seeds shard r the same way (harness/acerag/train.py
forked_map), so the upstream at twin scale is reproducible and compared with the twin on the same draws. Only the
seed of the draws changes; which rows, how many draws and what is drawn stay upstream's.
"""

import os
import random
import sys


def _seed_each_shard() -> None:
    mod = sys.modules.get("datasets.arrow_dataset")  # forked from a process that maps: datasets is imported
    if mod is None:
        return
    inner = mod.Dataset.__dict__["_map_single"]
    inner = getattr(inner, "__func__", inner)
    if getattr(inner, "_seeded_by_rank", False):
        return

    def _map_single(*args, **kwargs):
        random.seed(kwargs.get("rank") or 0)  # a single shard has no rank: shard 0
        yield from inner(*args, **kwargs)

    _map_single._seeded_by_rank = True
    mod.Dataset._map_single = staticmethod(_map_single)


os.register_at_fork(after_in_child=_seed_each_shard)
