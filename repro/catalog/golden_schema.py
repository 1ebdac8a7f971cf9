"""The golden file format (expected/golden/<recipe>/<env key>.json) as a pydantic model.

Why a schema: a golden is read back after a run trained for minutes; a truncated, empty or hand-edited
file (a string end_step, a NaN value) must be refused before any training starts, in one line naming
the file and field, instead of crashing after the run or comparing against garbage. Steps are strict
integers and values strict finite numbers: JSON's NaN/Infinity and "100" are refused, never coerced.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import ConfigDict, StrictFloat, StrictInt, field_validator, model_validator

from repro.catalog.schema_base import Strict


class GoldenCurve(Strict):
    start_step: StrictInt
    end_step: StrictInt
    step_interval: StrictInt
    values: dict[str, StrictFloat | StrictInt]

    @field_validator("values")
    @classmethod
    def _finite_steps(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("no values: re-record the golden")
        for step, value in v.items():
            if not step.isascii() or not step.isdigit():
                raise ValueError(f"step {step!r} is not a whole number")
            if not math.isfinite(value):
                raise ValueError(f"step {step}: {value} is not a finite number")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "GoldenCurve":
        steps = sorted(int(s) for s in self.values)
        if self.start_step != steps[0] or self.end_step != steps[-1]:
            raise ValueError(f"start_step {self.start_step}/end_step {self.end_step} do not match the steps of "
                             f"its values ({steps[0]}..{steps[-1]})")
        if self.step_interval < 1:
            raise ValueError(f"step_interval {self.step_interval} must be at least 1")
        return self


class GoldenFile(Strict):
    model_config = ConfigDict(extra="forbid", frozen=True)

    env_key: str
    assets: dict[str, str]
    provenance: dict[str, Any]
    metrics: dict[str, GoldenCurve]

    @field_validator("metrics")
    @classmethod
    def _some(cls, v: dict) -> dict:
        if not v:
            raise ValueError("no metric curves: re-record the golden")
        return v
