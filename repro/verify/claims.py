"""The claims registry: one ``expected/<recipe>.yaml`` per recipe, validated by these models.

A claim is a published number plus everything needed to judge a run against it: what the
number means, where it was published (repository + path + 40-hex commit, or paper + table),
what it was measured under (hardware, batch/parallel config, window of steps), how a log can
measure it (``measure``), and how close is close enough (``tolerance`` with a sentence on why).

Claims are data so that adding a recipe never touches code, and so that every number in a
report can be traced back to a file and a commit. ``extra="forbid"`` everywhere: a misspelt
key is an error, not a silently ignored field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from repro.base.paths import EXPECTED_DIR
from repro.base.errors import ReproError
from repro.inputs import read_text
from repro.verify.flops import load_models
from repro.verify.hardware import require_gpu

Kind = Literal["throughput", "loss", "memory", "hyperparameter", "derived", "evaluation", "sanity", "none"]
#: How a per-step series becomes one measured number (see expected/README.md):
#:   first / final: first or last logged value in the window;   mean / median / min / max;
#:   peak: the maximum, but only once the series has stopped rising after it (a run that stops
#:     mid-warm-up has not shown its peak learning rate yet);
#:   step_of_peak: the optimizer step at which ``peak`` happened (= warm-up length);
#:   linear_decay_end: the step where a linearly decaying series (the LR) reaches zero, from a
#:     least-squares line through the points after the peak (= total optimizer steps).
Reduce = Literal[
    "first", "final", "mean", "median", "min", "max", "peak", "step_of_peak", "linear_decay_end"
]

_HEX40 = re.compile(r"[0-9a-f]{40}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RepoSource(_Strict):
    """A file in a git repository at a full commit."""

    repo: str = Field(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
    path: str = Field(min_length=1)
    commit: str | None
    lines: str | None = None  # e.g. "L37-L41" or a table row name
    quote: str | None = None  # the published words, verbatim where short
    note: str | None = None

    @field_validator("commit")
    @classmethod
    def _full_hex(cls, value: str | None) -> str | None:
        if value is not None and not _HEX40.fullmatch(value):
            raise ValueError("must be 40 hex characters")
        return value

    def cite(self) -> str:
        at = self.commit if self.commit else "(commit unknown)"
        return f"{self.repo}/{self.path}@{at}" + (f" {self.lines}" if self.lines else "")


class PaperSource(_Strict):
    """A paper, model card or web page, with the table or section the number is in."""

    paper: str = Field(min_length=1)
    table: str | None = None
    section: str | None = None
    url: str | None = None
    quote: str | None = None
    note: str | None = None

    @model_validator(mode="after")
    def _located(self) -> "PaperSource":
        if not (self.table or self.section):
            raise ValueError("a paper source needs a table or a section")
        return self

    def cite(self) -> str:
        where = self.table or self.section
        return f"{self.paper}, {where}"


def _source_kind(value: Any) -> str:
    """A mapping with ``paper`` is a PaperSource, anything else a RepoSource: choosing the member
    up front means a bad source gets the one error of the kind the author meant, not both."""
    if isinstance(value, dict):
        return "paper" if "paper" in value else "repo"
    return "paper" if isinstance(value, PaperSource) else "repo"


Source = Annotated[
    Union[Annotated[RepoSource, Tag("repo")], Annotated[PaperSource, Tag("paper")]],
    Discriminator(_source_kind),
]


class Window(_Strict):
    """Which steps a number refers to. ``steps`` is an inclusive [first, last] optimizer-step
    range (``last`` null = open); ``skip_first`` drops warm-up steps from a steady-state window."""

    steps: tuple[int, int | None] | None = None
    description: str | None = None
    steady_state: bool = False
    skip_first: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _described(self) -> "Window":
        if self.steps is None and not self.description:
            raise ValueError("give steps or a description")
        if self.steps is not None:
            first, last = self.steps
            if first < 1 or (last is not None and last < first):
                raise ValueError("steps must be [first >= 1, last >= first or null]")
        return self


class Hardware(_Strict):
    gpu: str | None = None  # a key of repro.verify.hardware (None: the publication does not say)
    count: int | None = Field(default=None, gt=0)
    note: str | None = None

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, value: str | None) -> str | None:
        if value is None:
            return None

        return require_gpu(value)


class ClaimConfig(_Strict):
    """The batch / parallel configuration a number was measured under, plus what FLOPs need."""

    model: str | None = None  # key of expected/_models.yaml
    seq_len: int | None = Field(default=None, gt=0)
    window_size: int | None = Field(default=None, gt=0)  # attention window the RUN configures
    flops_formula: Literal["fast_llm", "dense"] | None = None
    global_batch: int | None = Field(default=None, gt=0)  # sequences per optimizer step
    global_batch_tokens: int | None = Field(default=None, gt=0)
    micro_batch_size: int | None = Field(default=None, gt=0)
    gradient_accumulation: int | None = Field(default=None, gt=0)
    dp: int | None = Field(default=None, gt=0)
    tp: int | None = Field(default=None, gt=0)
    pp: int | None = Field(default=None, gt=0)
    cp: int | None = Field(default=None, gt=0)
    ep: int | None = Field(default=None, gt=0)
    zero_stage: int | None = Field(default=None, ge=0, le=3)
    precision: str | None = None
    recompute: str | None = None
    notes: str | None = None


class Tolerance(_Strict):
    """``|measured - expected| <= abs + rel * |expected|`` (numpy ``isclose`` semantics).

    Two-sided by default: a run much *faster* or *lower-loss* than published is as suspicious as
    a slower one (Megatron-Bridge flags "UNEXPECTED IMPROVEMENT"). One-sided bounds name which
    side fails: ``bound: upper`` fails only above, ``bound: lower`` only below.
    """

    rel: float | None = Field(default=None, ge=0)
    abs: float | None = Field(default=None, ge=0)
    two_sided: bool = True
    bound: Literal["upper", "lower"] | None = None
    budget: int | None = Field(default=None, ge=0)  # failing steps allowed on a curve
    mfu_band: float | None = Field(default=None, gt=0)  # rel. band on MFU when the GPU differs
    rationale: str = Field(min_length=10)

    @model_validator(mode="after")
    def _complete(self) -> "Tolerance":
        if self.rel is None and self.abs is None:
            raise ValueError("give rel or abs")
        if self.two_sided and self.bound is not None:
            raise ValueError("bound only applies when two_sided is false")
        if not self.two_sided and self.bound is None:
            raise ValueError("a one-sided tolerance needs bound: upper or lower")
        return self

    def describe(self) -> str:
        parts = []
        if self.rel is not None:
            parts.append(f"{self.rel:.3g} rel")
        if self.abs is not None:
            parts.append(f"{self.abs:.3g} abs")
        side = "two-sided" if self.two_sided else f"one-sided ({self.bound} bound)"
        return " + ".join(parts) + f", {side}"


class Measure(_Strict):
    """How a log speaks to the claim: the first of ``keys`` the records carry, reduced."""

    keys: list[str] = Field(min_length=1)
    reduce: Reduce
    phase: Literal["train", "eval"] = "train"


class Claim(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    kind: Kind
    metric: str = Field(min_length=1)
    definition: str = Field(min_length=10)
    value: float | None
    units: str
    window: Window
    hardware: Hardware = Hardware()
    config: ClaimConfig = ClaimConfig()
    source: Source
    secondary: bool = False
    tolerance: Tolerance | None = None
    measure: Measure | None = None
    used_by_verdict: bool = True
    conflicts_with: list[str] = []
    notes: str | None = None

    @model_validator(mode="after")
    def _coherent(self) -> "Claim":
        if self.kind == "none":
            if self.value is not None:
                raise ValueError("a 'none' claim records that nothing was published: value must be null")
            if self.measure is not None:
                raise ValueError("a 'none' claim cannot be measured")
        else:
            if self.value is None:
                raise ValueError(f"a '{self.kind}' claim needs a value")
            if self.tolerance is None:
                raise ValueError(f"a '{self.kind}' claim needs a tolerance")
        if isinstance(self.source, RepoSource) and self.source.commit is None and not self.secondary:
            raise ValueError("source.commit may be null only on a secondary claim")
        if self.kind == "throughput" and self.measure is not None:
            if self.config.model is not None and self.config.seq_len is None:
                raise ValueError("a throughput claim with config.model needs config.seq_len")
        return self


class ExpectedFile(_Strict):
    recipe: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    notes: str = Field(min_length=1)
    claims: list[Claim] = Field(min_length=1)

    @model_validator(mode="after")
    def _cross_references(self) -> "ExpectedFile":
        ids = [c.id for c in self.claims]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate claim ids: {', '.join(dupes)}")
        known = set(ids)
        for claim in self.claims:
            missing = [c for c in claim.conflicts_with if c not in known]
            if missing:
                raise ValueError(f"claim '{claim.id}' conflicts_with unknown ids: {', '.join(missing)}")
        return self

    def claim(self, claim_id: str) -> Claim:
        for c in self.claims:
            if c.id == claim_id:
                return c
        raise KeyError(claim_id)


# --------------------------------------------------------------------------------------------
# Loading, with one-line errors
# --------------------------------------------------------------------------------------------


def expected_path(recipe_id: str, root: Path | None = None) -> Path:
    return (root or EXPECTED_DIR) / f"{recipe_id}.yaml"


def list_expected(root: Path | None = None) -> list[str]:
    """Recipe ids that have an expected file (files starting with '_' are shared tables)."""
    folder = root or EXPECTED_DIR
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.name.startswith("_"))


def _format_loc(loc: tuple[Any, ...]) -> str:
    """``('claims', 3, 'source', 'repo', 'commit')`` -> ``claims[3].source.commit``.

    Pydantic inserts the source union's tag ("repo"/"paper") into the location; it is not a
    field the user can fix, so it is dropped.
    """
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("repo", "paper") and out.endswith("source"):
            continue  # the union tag, not a field
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _message(err: dict[str, Any]) -> str:
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    return msg


def parse_expected(raw: Any, label: str) -> ExpectedFile:
    """Validate an already-loaded mapping; ``label`` names the file in the one-line error."""
    try:
        return ExpectedFile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ReproError(f"{label}: {_format_loc(err['loc'])}: {_message(err)}") from None


def load_expected(recipe_id: str, root: Path | None = None) -> ExpectedFile:
    """Read ``expected/<recipe_id>.yaml``; any problem is one ReproError line naming file and field."""
    path = expected_path(recipe_id, root)
    label = f"expected/{path.name}"
    if not path.is_file():
        raise ReproError(f"{label}: no expected file for recipe '{recipe_id}' (see 'repro list' for ids)")
    text = read_text(path, "expected file")  # not UTF-8, or not a regular file: one line
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "?"
        raise ReproError(f"{label}: {where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    expected = parse_expected(raw, label)
    if expected.recipe != recipe_id:
        raise ReproError(f"{label}: recipe: '{expected.recipe}' does not match the file name")
    _check_models(expected, label)
    return expected


def _check_models(expected: ExpectedFile, label: str) -> None:
    """config.model must name a row of expected/_models.yaml, or FLOPs would silently be unknown."""
    models = load_models()
    for i, claim in enumerate(expected.claims):
        if claim.config.model is not None and claim.config.model not in models:
            raise ReproError(
                f"{label}: claims[{i}].config.model: unknown model '{claim.config.model}' "
                f"(known: {', '.join(sorted(models))})"
            )
