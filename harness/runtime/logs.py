"""Logging the way upstream scripts do: their format on stdout (the twin's log carries their lines),
library chatter silenced, messages from the main process only."""

from __future__ import annotations

import logging
import random
import sys
import warnings


def log_main(logger: logging.Logger, accelerator, message: str) -> None:
    if accelerator is None or accelerator.is_main_process:
        logger.info(message)


def configure_logging() -> None:
    """Upstream's log format; on stdout so the twin's stdout carries the ``Step:`` lines."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        level=logging.INFO,
        stream=sys.stdout,
        force=True,
    )
    import datasets
    import transformers

    logging.getLogger("accelerate").setLevel(logging.WARNING)  # per-file checkpoint chatter
    # Upstream's collator on "pt"-formatted rows warns about list->tensor speed on every run; noise here.
    warnings.filterwarnings("ignore", message="Creating a tensor from a list of numpy.ndarrays")
    datasets.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def log_samples(logger: logging.Logger, accelerator, dataset, tokenizer, n: int = 3) -> None:
    """Upstream logs a few random samples (random.sample after set_seed); here decoded and short."""
    for index in random.sample(range(len(dataset)), min(n, len(dataset))):
        row = dataset[index]
        n_labels = int((row["labels"] != -100).sum())
        text = tokenizer.decode(row["input_ids"])
        log_main(logger, accelerator, f"Sample {index}: {len(row['input_ids'])} tokens, {n_labels} labelled: {text[:160]!r}")
