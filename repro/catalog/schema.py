"""Typed schema of a recipe: the pinned, published command of one training result, as data.

A recipe file (recipes/<family>/<id>.yaml) says where the result was published, the exact published
text, the command as structure (launcher, entry point, arguments, each deviation from the published
text with its reason), the environment at the pinned commit, the topology and batch geometry it ran
under, and the derived quantities a verifier recomputes. Everything is validated here so that the
logic modules (rescale, render, lint) can trust their input.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

# the primitives and the twin block live in their own modules; every name stays importable from here
from repro.catalog.schema_base import PATH_PARAM, Arg, Strict, _scalar, inside  # noqa: F401
from repro.catalog.twin_schema import (  # noqa: F401
    CHECK_KINDS, INTEGRITY_CHECKS, ConfigEffect, GoldenMetric, Mutant, NegativeControl, Needs, StageTransform, Twin, TwinAsset, TwinCheck,
    TwinEquivalence, TwinGeometry,
)

SHA40 = re.compile(r"^[0-9a-f]{40}$")
RECIPE_ID = re.compile(r"^[a-z0-9]+(-[a-z0-9.]+)*$")


# --------------------------------------------------------------------------------------------
# Provenance


class Upstream(Strict):
    repo: str  # owner/name on GitHub
    commit: str
    doc_path: str  # the document at that commit that the seed reproduces
    ref: str | None = None  # e.g. refs/pull/642/head when the commit is not on a branch
    released: bool = True  # False: the code the command needs is not in any release (unmerged PR)
    note: str | None = None

    @field_validator("commit")
    @classmethod
    def _sha(cls, v: str) -> str:
        if not SHA40.match(v):
            raise ValueError("must be a full 40-hex commit")
        return v


class Artifact(Strict):
    """A model or dataset the command names, pinned where a revision exists."""

    id: str
    role: str  # base model, tokenizer, train data, eval data, output, ...
    revision: str | None = None  # commit or tag; None only with a note saying why
    public: bool = True
    note: str | None = None

    @model_validator(mode="after")
    def _why_unpinned(self) -> "Artifact":
        if self.revision is None and not self.note:
            raise ValueError(f"{self.id}: no revision and no note saying why")
        return self


class Provenance(Strict):
    seed_file: str  # file name in shared/seeds/
    section: str  # heading in the seed document
    upstream: Upstream
    artifacts: list[Artifact] = []
    sources: list[str] = []  # research notes, issues, commits that back the recipe's facts

    @field_validator("seed_file")
    @classmethod
    def _seed_is_a_name(cls, v: str) -> str:
        if len(PurePosixPath(inside(v, "seed_file")).parts) != 1:
            raise ValueError(f"{v!r}: seed_file is a file name in shared/seeds/, not a path")
        return v


# --------------------------------------------------------------------------------------------
# Published text


class PublishedBlock(Strict):
    line: int = Field(ge=1)  # first line of `text` in the seed file
    text: str
    format: Literal["auto", "shell", "yaml", "table"] = "auto"  # auto: detected by repro.lint.rules


class PublishedProse(Strict):
    line: int = Field(ge=1)
    kind: Literal["rescaling", "hardware", "note"]
    text: str


class Published(Strict):
    """The seed's own words, character for character, defects included."""

    blocks: list[PublishedBlock] = Field(min_length=1)
    prose: list[PublishedProse] = []
    #: Names the published text uses for the batch geometry (e.g. NUM_PROCESSES -> processes), so the
    #: linter can check rescaling advice written in prose.
    geometry_names: dict[str, Literal["processes", "per_device", "grad_accum", "nodes"]] = {}


# --------------------------------------------------------------------------------------------
# Runnable command


class Launcher(Strict):
    kind: Literal["accelerate", "deepspeed", "torchrun", "python", "fast-llm"]
    args: list[Arg] = []
    schema_id: str | None = None  # recipes/_entrypoints id of the launcher's own flags


class Entry(Strict):
    kind: Literal["script", "module"]
    target: str  # open_instruct/finetune.py, or a module name for -m
    schema_id: str | None = None  # recipes/_entrypoints id of the entry point's flags


class Deviation(Strict):
    """One place where the runnable command differs from the published text, and why."""

    flag: str | None = None  # the flag that differs (None for non-flag changes)
    what: str
    why: str


class Command(Strict):
    workdir: str = "."  # relative to the upstream checkout
    prelude: list[str] = []  # verbatim shell lines run before the launcher (documented in deviations)
    env: dict[str, str] = {}
    launcher: Launcher
    entry: Entry
    args: list[Arg]
    deviations: list[Deviation] = []

    def flag_values(self) -> dict[str, tuple[str, ...]]:
        return {a.flag: a.values for a in self.args if a.flag}


class ConfigFile(Strict):
    """A config file the command references, stored beside the recipe with its exact values."""

    ref: str  # the path as the command names it
    file: str  # path of the stored copy, relative to the recipe file
    format: Literal["json", "yaml"]
    origin: str  # "<repo>@<commit>:<path>" or "seed:<line>"
    role: Literal["deepspeed", "accelerate", "fast-llm", "data"] = "deepspeed"

    @field_validator("file")
    @classmethod
    def _file_inside(cls, v: str) -> str:
        return inside(v, "a stored config copy (relative to the recipe file)")
    #: Values the launcher really runs with where the file says "auto" or relies on a default that
    #: moved between versions (dotted key -> value); `repro lint` recomputes the ones it can derive.
    effective: dict[str, Any] = {}
    effective_source: str | None = None


class Environment(Strict):
    python: str | None = None
    #: name -> exact version; None means the upstream leaves it unpinned (say what resolves in `notes`)
    packages: dict[str, str | None]
    install: list[str] = []  # the upstream's own install steps at the commit
    notes: list[str] = []


# --------------------------------------------------------------------------------------------
# Topology and batch geometry


class Topology(Strict):
    nodes: int = Field(ge=1)
    gpus_per_node: int = Field(ge=1)
    gpus: int = Field(ge=1)  # GPUs in use in total (RLVR's vLLM engines included)
    gpu: str  # e.g. H100-80GB; "unspecified" when the document does not say
    gpu_mem_gib: float | None = None
    min_gpu_mem_gib: float | None = None  # below this the recipe cannot run at all
    source: str  # where the hardware fact comes from

    @model_validator(mode="after")
    def _fits(self) -> "Topology":
        if self.gpus > self.nodes * self.gpus_per_node:
            raise ValueError(f"gpus {self.gpus} > nodes x gpus_per_node")
        return self


LossReduction = Literal[
    "sum",  # summed token CE per micro-batch (open-instruct --reduce_loss sum)
    "token_mean_global",  # mean over all non-pad tokens of the optimizer step (HF num_items_in_batch)
    "token_mean_per_microbatch",  # HF mean within a micro-batch, averaged over micro-batches
    "token_mean_per_rank",  # HF 4.46-4.53 without average_tokens_across_devices: per-rank token mean, ranks averaged
    "sample_mean",  # per-example loss averaged over examples (DPO, RM, per_device 1 CE)
    "pretrain_token_mean",  # packed fixed-length sequences: every layout weighs tokens equally
    "rl",  # PPO-style objective; compared by invariants, not curves
]


class BatchFlags(Strict):
    per_device: str | None  # the flag carrying the per-device (micro) batch
    grad_accum: str | None  # None: the framework derives accumulation itself (Fast-LLM, RLVR)
    local_batch: str | None = None  # per-rank batch = per_device x grad_accum (RLVR local_mini_batch_size)
    #: flags whose value is a fixed global total split across data-parallel ranks
    per_rank_totals: dict[str, int] = {}
    actors_per_node: str | None = None  # RLVR --actor_num_gpus_per_node: training ranks per node


class Batch(Strict):
    """The published batch geometry. effective = dp x per_device x grad_accum, exactly."""

    per_device: int = Field(ge=1)
    grad_accum: int = Field(ge=1)
    effective: int = Field(ge=1)  # sequences (or samples/rollouts) per optimizer step
    seq_len: int = Field(ge=1)
    packed: bool = False  # True: every sequence is exactly seq_len tokens (pretraining)
    loss_reduction: LossReduction
    loss_note: str  # what the reduction means for rescaling
    per_device_policy: Literal["fixed", "at_most"]  # fixed: changing it changes the loss
    flags: BatchFlags


class Parallel(Strict):
    zero_stage: int | None = None
    cp: int = 1  # context-parallel degree; dp = (world - reserved) / cp
    ep: int = 1  # expert-parallel degree; must divide the world size
    tp: int = 1
    fsdp: Literal["v1", "v2"] | None = None
    #: GPUs held by something other than training ranks (RLVR's vLLM engines)
    reserved_gpus: int = 0
    reserved_tp: int = 1  # GPUs one reserved engine needs on a single node
    world: dict[Literal["exact", "min", "max"], int] = {}  # allowed training world sizes
    may_use_subset: bool = False  # single-GPU recipes: run on 1 of N GPUs
    alternative: str | None = None  # recipe to use when the world constraint refuses

    @model_validator(mode="after")
    def _degrees(self) -> "Parallel":
        for name in ("cp", "ep", "tp"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        return self


class Derived(Strict):
    """Quantities a verifier recomputes from the recipe; repro.catalog.derive checks the stored values.

    Inputs (dataset_rows, epochs, total_episodes, train_iters, warmup_*) come from the published
    text or the research notes; outputs (steps_per_epoch, optimizer_steps, warmup_steps, tokens)
    are stored so a reader sees them, and must equal what repro.catalog.derive computes.
    """

    dataset_rows: int | None = None
    dataset_rows_source: str | None = None
    epochs: int | None = None
    total_episodes: int | None = None  # RL: optimizer steps = total_episodes // effective batch
    train_iters: int | None = None  # pretraining: a fixed iteration count
    warmup_ratio: float | None = None
    warmup_iters: int | None = None  # an absolute warmup (Fast-LLM --lr_warmup_iters)
    #: open-instruct: int(steps * ratio); HF Trainer get_warmup_steps: ceil(steps * ratio)
    warmup_rounding: Literal["floor", "ceil"] = "floor"
    steps_per_epoch: int | None = None
    optimizer_steps: int | None = None
    warmup_steps: int | None = None
    tokens_per_step: int | None = None  # only when every sequence is exactly seq_len (packed)
    total_tokens: int | None = None
    note: str | None = None


FAMILIES = ("toolgen", "tulu3", "acerag", "fastllm", "fms")
Family = Literal["toolgen", "tulu3", "acerag", "fastllm", "fms"]


class Recipe(Strict):
    id: Annotated[str, Field(pattern=RECIPE_ID.pattern)]
    family: Family
    title: str
    task: Literal["sft", "dpo", "rm", "rlvr", "pretrain", "lora", "encoder"]
    summary: str
    provenance: Provenance
    published: Published
    command: Command
    config_files: list[ConfigFile] = []
    environment: Environment
    topology: Topology
    batch: Batch
    parallel: Parallel = Parallel()
    derived: Derived = Derived()
    depends_on: list[str] = []  # recipes whose output this one starts from
    #: the stage(s) a twin/full run consumes, and how each is found (one mapping, or a list of them)
    needs: Needs | list[Needs] | None = None
    runnable: bool = True  # False: the published code cannot run as pinned (reason in notes)
    notes: list[str] = []
    twin: Twin | None = None

    @model_validator(mode="after")
    def _geometry_multiplies_out(self) -> "Recipe":
        dp = data_parallel_size(self.topology.gpus, self.parallel)
        got = dp * self.batch.per_device * self.batch.grad_accum
        if got != self.batch.effective:
            raise ValueError(
                f"batch: dp {dp} x per_device {self.batch.per_device} x grad_accum "
                f"{self.batch.grad_accum} = {got}, not effective {self.batch.effective}"
            )
        return self

    @property
    def needs_list(self) -> list[Needs]:
        """Every stage this recipe starts from (the single form is a list of one)."""
        if self.needs is None:
            return []
        return list(self.needs) if isinstance(self.needs, list) else [self.needs]

    @model_validator(mode="after")
    def _needs_is_a_dependency(self) -> "Recipe":
        if isinstance(self.needs, list) and not self.needs:
            raise ValueError("needs: an empty list (leave needs out instead)")
        flags = [n.flag for n in self.needs_list]
        if len(set(flags)) != len(flags):
            raise ValueError(f"needs: two stages feed the same flag ({', '.join(flags)})")
        for n in self.needs_list:
            if n.stage not in self.depends_on:
                raise ValueError(f"needs.stage {n.stage!r} is not in depends_on {self.depends_on}")
        return self


def data_parallel_size(gpus: int, parallel: Parallel) -> int:
    """Data-parallel ranks: GPUs not reserved for inference, divided by the context/tensor degree."""
    train = gpus - parallel.reserved_gpus
    return train // (parallel.cp * parallel.tp)
