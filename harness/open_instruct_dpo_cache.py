"""open-instruct ``dpo_tune_cache.py`` @30d11b4: the DPO trainer of harness/open_instruct_dpo.py in cache
mode (reference log-probs computed once over the training dataloader before step 1, no reference model
in memory while training; ``--concatenated_forward`` and ``--fused_optimizer`` accepted)."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from harness.open_instruct_dpo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(cache=True))
