"""Runtime pieces of the scaled-down twins: offline assets, bundled data and reference trainers.

A twin runs the same launcher and the same trainer semantics as a published recipe, but on a tiny
model, a bundled data set and a tokenizer trained at build time, so that it finishes in seconds on a
CPU-only machine with no hub access.  Nothing in this package downloads anything.
"""

from pathlib import Path

#: Folder of this package; bundled text lives under ``corpus/``.
HARNESS_DIR = Path(__file__).resolve().parent
CORPUS_DIR = HARNESS_DIR / "corpus"
