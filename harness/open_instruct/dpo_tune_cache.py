"""open-instruct ``dpo_tune_cache.py`` @30d11b4: the DPO trainer of harness/open_instruct/dpo_tune.py in cache
mode (reference log-probs computed once over the training dataloader before step 1, no reference model
in memory while training; ``--concatenated_forward`` and ``--fused_optimizer`` accepted)."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from harness.open_instruct.dpo_tune import PROG_CACHE, main  # noqa: E402
from harness.runtime.entry import run_main  # noqa: E402


def main_cache(argv=None) -> int:
    return main(argv, cache=True)


if __name__ == "__main__":
    sys.exit(run_main(PROG_CACHE, main_cache))
