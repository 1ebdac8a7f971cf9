"""The shared twin trainer runtime: everything a family's trainer needs that is not its semantics.

Narrow signatures, no family types: a trainer module (harness/<family>/<entry>.py) imports these and
keeps only what its upstream entry point does differently. See README "Add a family's twin".

- entry: script bootstrap, offline environment, the error contract (one line, exit 2; Ctrl-C 130)
- cli: HfArgumentParser-style parsing of dataclass CLIs, with one-line errors
- hub: hub id -> bundled local asset (offline)
- dist: launcher detection, process-group start, accelerate on CPU, the clean gloo exit
- metrics: the rank-0 writer of one normalized record per optimizer step
- clock: step wall times
- checkpoint: completed-checkpoint discovery, markers, keep-last-n, torch state, the kill hook
- hf_trainer: a TrainerCallback that writes the normalized records for HF-Trainer entry points
"""
