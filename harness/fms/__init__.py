"""fms-hf-tuning 3.2.2 (``tuning.sft_trainer``) semantics for the fms twins.

fms-hf-tuning 3.2.2 pins torch < 2.9 (CUDA builds only on PyPI) and transformers <= 4.55.4, so it cannot
be installed on CPU CI. The modules here re-implement what it does with the published flags: the CLI
parse (unknown flags dropped, prefixes resolved), the data formats, response-template masking as
trl 0.19.1's completion-only collator computes it, the file logger's ``training_logs.jsonl``, and the
MXFP4 checkpoint format gpt-oss ships in. The pure parts have no torch import at module level.
"""
