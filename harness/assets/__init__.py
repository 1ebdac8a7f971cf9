"""Offline twin assets, each built by a named builder from data in the twin block and cached under
its own content key (see cache.py). Builders here are shared by every family; a family's own
builders live beside its trainer (harness/<family>/)."""
