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

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SHA40 = re.compile(r"^[0-9a-f]{40}$")
RECIPE_ID = re.compile(r"^[a-z0-9]+(-[a-z0-9.]+)*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def inside(v: str, what: str, under: str | None = None) -> str:
    """The one rule for every path a recipe names: relative, no '..', no '~', nothing a file system
    would read as another place; optionally under one top folder. A recipe never reaches outside
    the project, whatever it says."""
    p = PurePosixPath(v)
    if (not v or p.is_absolute() or ".." in p.parts or v.startswith("~") or "\\" in v or "\0" in v
            or any(ord(c) < 32 for c in v) or (under is not None and (not p.parts or p.parts[0] != under))):
        where = f"under {under}/ " if under else ""
        raise ValueError(f"{v!r}: {what} must be a relative path {where}inside the project (no '/', '..' or '~' "
                         "at the start)")
    return v


#: Asset parameters whose names end like these hold paths, which must stay inside the project too.
PATH_PARAM = re.compile(r"(^|_)(path|file|dir|folder)s?$")


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


class Arg(Strict):
    """One command-line argument: a flag and its values, or a positional value (flag '')."""

    flag: str
    values: tuple[str, ...] = ()
    joined: bool = False  # render as --flag=value (one token)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        """YAML shorthand: "--flag", "--flag=value", or [--flag, v1, v2, ...]."""
        if isinstance(data, str):
            if data.startswith("-") and "=" in data:
                flag, _, value = data.partition("=")
                return {"flag": flag, "values": (value,), "joined": True}
            if data.startswith("-"):
                return {"flag": data}
            return {"flag": "", "values": (data,)}
        if isinstance(data, (list, tuple)):
            if not data:
                raise ValueError("empty argument")
            head, *rest = data
            return {"flag": str(head), "values": tuple(_scalar(v) for v in rest)}
        return data

    @model_validator(mode="after")
    def _well_formed(self) -> "Arg":
        if self.joined and len(self.values) != 1:
            raise ValueError(f"{self.flag}: a joined --flag=value needs exactly one value")
        if not self.flag and len(self.values) != 1:
            raise ValueError("a positional argument needs exactly one value")
        return self

    def tokens(self) -> list[str]:
        if not self.flag:
            return list(self.values)
        if self.joined:
            return [f"{self.flag}={self.values[0]}"]
        return [self.flag, *self.values]


def _scalar(v: Any) -> str:
    """YAML turns 1.0 into a float and True into a bool; a command line only has strings."""
    if isinstance(v, bool):
        return "True" if v else "False"
    if v is None:
        raise ValueError("null is not a command-line value; quote it")
    return str(v)


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


# --------------------------------------------------------------------------------------------
# Twin (the scaled-down runnable counterpart); its runtime fills this in per family.


class TwinGeometry(Strict):
    processes: int = Field(ge=1)
    per_device: int = Field(ge=1)
    grad_accum: int = Field(ge=1)
    # context-parallel degree: `cp` consecutive ranks share every sequence, so dp = processes / cp
    cp: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _cp_divides(self):
        if self.processes % self.cp:
            raise ValueError(f"cp {self.cp} does not divide processes {self.processes}")
        return self

    @property
    def dp(self) -> int:
        return self.processes // self.cp

    @property
    def effective(self) -> int:
        return self.dp * self.per_device * self.grad_accum

    @property
    def name(self) -> str:
        return f"{self.processes}x{self.per_device}x{self.grad_accum}" + (f"-cp{self.cp}" if self.cp > 1 else "")


class TwinAsset(Strict):
    """One offline asset: built by `builder` from `params`, standing in for the hub ids it names."""

    kind: Literal["tokenizer", "model", "dataset", "other"]
    builder: str  # "harness.<module>:<function>"
    params: dict[str, Any] = {}
    stands_for: list[str] = []
    deps: list[str] = []  # other assets of the same twin block (a model's tokenizer)

    @field_validator("params")
    @classmethod
    def _path_params_inside(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, value in v.items():
            if PATH_PARAM.search(key):
                for item in value if isinstance(value, list) else [value]:
                    if isinstance(item, str):
                        inside(item, f"params.{key}")
        return v

    @field_validator("builder")
    @classmethod
    def _builder_in_harness(cls, v: str) -> str:
        module, sep, func = v.partition(":")
        if not sep or not re.fullmatch(r"harness(\.[A-Za-z_]\w*)+", module) or not func.isidentifier():
            raise ValueError(f"{v!r}: expected 'harness.<module>:<function>' (builders live in harness/)")
        return v


CHECK_KINDS = ("finite", "golden", "value_at_step", "max_at_most", "min_at_least", "final_above",
               "final_below", "rises", "falls")


class TwinCheck(Strict):
    """A check the verdict runs over the twin's metrics (a core field or extra.<key>)."""

    kind: Literal["finite", "golden", "value_at_step", "max_at_most", "min_at_least", "final_above",
                  "final_below", "rises", "falls"]
    metric: str = "loss"
    step: int | None = Field(default=None, ge=1)
    value: float | None = None
    tol: float = Field(default=0.0, ge=0)
    window: int = Field(default=5, ge=1)  # steps averaged by final_*/rises/falls
    why: str

    @model_validator(mode="after")
    def _needs(self):
        if self.kind == "value_at_step" and (self.step is None or self.value is None):
            raise ValueError("value_at_step needs step and value")
        if self.kind in ("max_at_most", "min_at_least", "final_above", "final_below") and self.value is None:
            raise ValueError(f"{self.kind} needs value")
        return self


class GoldenMetric(Strict):
    rtol: float = Field(ge=0)
    why: str


class NegativeControl(Strict):
    """A run that must NOT match the reference: shows the equivalence check can fail."""

    geometry: TwinGeometry | None = None
    set: list[Arg] = []
    why: str

    @model_validator(mode="after")
    def _changes_something(self):
        if self.geometry is None and not self.set:
            raise ValueError("a negative control needs a geometry or a set of argument changes")
        return self


class TwinEquivalence(Strict):
    metric: str = "loss"
    layouts: list[TwinGeometry] = Field(min_length=3)  # the first is the reference
    negative_control: NegativeControl
    max_rel: float = 1e-5
    mean_rel: float = 1e-6
    why: str

    @model_validator(mode="after")
    def _same_effective(self):
        sizes = {g.effective for g in self.layouts}
        if len(sizes) != 1:
            raise ValueError(f"layouts must share one effective batch, got {sorted(sizes)}")
        return self


class ConfigEffect(Strict):
    """A value a launcher config applies (after the launcher fills its `auto`s) that the twin's CPU path,
    which cannot use that config, must apply through the entry point's own flag."""

    config: str  # ConfigFile.file
    key: str  # dotted key in the config

    @field_validator("config")
    @classmethod
    def _config_inside(cls, v: str) -> str:
        return inside(v, "config")
    flag: str  # the entry point's flag that applies the same value
    why: str


class Twin(Strict):
    runner: str  # the trainer script, relative to the project root, under harness/
    assets: dict[str, TwinAsset]
    #: files the entry point reads from its working directory (upstream's command.workdir), path there ->
    #: "ASSET" or "ASSET/sub/path"; when set, the twin runs in OUT/work with these and the stored configs
    #: at their refs (ToolGen's train.py reads src/configs/*.json and its --datasets from the cwd)
    workdir_files: dict[str, str] = {}
    chat_template: str | None = None
    geometry: TwinGeometry
    overrides: list[Arg] = []  # argument changes that shrink the run (length, steps, samples)
    # entry flags whose first value is the context-parallel degree (fms --mcp): set to the geometry's cp,
    # dropped where cp is 1 (upstream refuses a degree of one)
    cp_flags: list[str] = []
    config_effects: list[ConfigEffect] = []
    checks: list[TwinCheck] = Field(min_length=1)
    golden: dict[str, GoldenMetric] = {}
    equivalence: TwinEquivalence | None = None
    budget_s: float = Field(default=30, gt=0)  # wall-time target on the 2-core CI machine (bench_twins)
    shrunk: list[str]
    kept: list[str]
    proves: list[str]
    cannot_prove: list[str]

    @field_validator("runner")
    @classmethod
    def _runner_inside(cls, v: str) -> str:
        if not v.endswith(".py"):
            raise ValueError(f"{v!r}: the runner must be a .py file under harness/ (a relative path inside "
                             "the project)")
        return inside(v, "the runner (a .py file)", under="harness")

    @model_validator(mode="after")
    def _consistent(self):
        for name, asset in self.assets.items():
            for dep in asset.deps:
                if dep not in self.assets:
                    raise ValueError(f"assets.{name}.deps: {dep!r} is not an asset of this twin")
        for path, source in self.workdir_files.items():
            parts = PurePosixPath(path).parts
            if PurePosixPath(path).is_absolute() or ".." in parts or not parts:
                raise ValueError(f"workdir_files: {path!r} must be a relative path inside the working directory")
            if source.split("/", 1)[0] not in self.assets:
                raise ValueError(f"workdir_files.{path}: {source!r} does not start with an asset of this twin")
        kinds = {c.kind for c in self.checks}
        if self.golden and "golden" not in kinds:
            raise ValueError("golden metrics are declared but no check of kind 'golden' uses them")
        if "golden" in kinds and not self.golden:
            raise ValueError("a 'golden' check needs golden metrics (golden: {loss: {rtol, why}})")
        return self


class StageTransform(Strict):
    """A twin-only step between a predecessor's output and this stage: an asset builder
    (``build(out, params, deps) -> ...``, harness/assets/cache.py) applied to the resolved output, cached in
    the asset cache under a key that hashes the builder (and its ASSET_INPUTS), the params and the
    predecessor's stage key. Declared in ``shrunk`` where it is used (e.g. the RLVR warm start)."""

    builder: str
    params: dict[str, Any] = {}
    why: str


class Needs(Strict):
    """A stage this recipe starts from, and how its published text finds that stage's output.

    ``path`` is what the published command reads: the predecessor's output directory itself (``find:
    fixed``, ToolGen's ``--model_name_or_path checkpoints/...``), the folder whose newest
    ``pattern`` entry by version sort is taken (``find: latest_checkpoint``, AceRAG's
    ``ls -d ${BASE}/checkpoint-* | sort -V | tail -n 1``), then ``subpath`` inside it, or the hub id of the
    predecessor's *published model* (``find: published_model``, Tulu 3's ``--model_name_or_path
    allenai/Llama-3.1-Tulu-3-8B-SFT``): the twin maps that id, wherever the command names it, to the
    predecessor's --output_dir (the folder its trainer saves the final model to). ``flag`` is the
    entry-point flag that receives the resolved path (for published_model: the flag that carries the id).
    ``then`` is an optional twin-only transform of the resolved output (StageTransform)."""

    stage: str
    flag: str
    path: str
    find: Literal["fixed", "latest_checkpoint", "published_model"] = "fixed"
    pattern: str = "checkpoint-*"
    subpath: str | None = None
    then: StageTransform | None = None
    source: str  # where in the published text the path is read (seed line / prelude variable)

    @model_validator(mode="after")
    def _published_model_is_a_hub_id(self) -> "Needs":
        if self.find == "published_model" and (self.subpath or not re.fullmatch(r"[\w.-]+/[\w.-]+", self.path)):
            raise ValueError(f"needs.path {self.path!r}: find published_model takes a hub id (owner/name), no subpath")
        return self

    def describe(self) -> str:
        if self.find == "fixed":
            how = f"{self.path}"
        elif self.find == "published_model":
            how = f"its published model {self.path} (the twin maps that id to the stage's --output_dir)"
        else:
            how = f"newest {self.pattern} by version sort under {self.path}"
        return (f"{self.flag} <- {self.stage}: {how}" + (f", then {self.subpath}/" if self.subpath else "")
                + (f", then {self.then.builder}" if self.then else ""))


# --------------------------------------------------------------------------------------------


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
