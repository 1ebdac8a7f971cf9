"""Where the project and its cache live: one definition for every stage and the trainers."""

from __future__ import annotations

import os
from pathlib import Path

#: Repository root (the checkout holding recipes/, expected/, harness/).
ROOT = Path(__file__).resolve().parent.parent.parent
RECIPES_DIR = ROOT / "recipes"
EXPECTED_DIR = ROOT / "expected"
#: The suite's cache: built assets (assets/), chained stages (stages/), library caches. REPRO_CACHE moves it.
CACHE_DIR = Path(os.environ.get("REPRO_CACHE", ROOT / ".repro-cache"))
