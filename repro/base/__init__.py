"""The base layer: what every stage of repro and every trainer under harness/ share (errors, the metrics
record, the device rule, paths, the curve-check primitives, the trainer contract). It imports nothing else
of the project, so anything may import it (tests/test_import_direction.py holds that)."""
