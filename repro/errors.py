"""Old name of repro.base.errors, kept because two asset-keyed builder files (harness/fast_llm/data.py,
harness/toolgen/vtokens.py) import it and editing them would re-key their goldens. New code imports
repro.base.errors."""

from repro.base.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, ReproError  # noqa: F401
