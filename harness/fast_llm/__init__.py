"""Fast-LLM twin: ``fast_llm/tools/train.py gpt`` semantics at ServiceNow/Fast-LLM@1aa6040, re-implemented.

Why a re-implementation: Fast-LLM is not on PyPI and its source needs Python >= 3.12 while the only CPU
torch here is for 3.11 (research: cpu-feasibility-wave2.md §1). The modules keep upstream's meaning
piece by piece, each a small pure part with its own tests:

- ``cli``: the flat ``--name=value`` parser (integers as booleans, prefixes, unknown flags exit 2).
- ``config``: the parsed namespace -> the typed settings the trainer uses, upstream's derivations and checks.
- ``schedule``: BatchConfig's micro-batch derivation and the learning-rate stages.
- ``mlp``: the MLP as one autograd function with upstream's recompute levels.
- ``memory``: activation bytes kept for backward, counted by saved-tensor hooks and by exact accounting.
- ``logs``: the ``Training @ iteration ...`` lines, the log file layout and ``get_tflops``.
- ``data``: Megatron mmap datasets, the document split and packed sampling.

Every difference from upstream is marked ``DEVIATION`` where it happens.
"""

UPSTREAM_REPO = "ServiceNow/Fast-LLM"
UPSTREAM_COMMIT = "1aa60404d9183bdc1735358a9479e33d3fbfd533"
