"""Typed schema of a recipe's twin block (what the scaled-down CPU run builds, runs and checks) and
of its chain (`needs`: the stage it starts from). Split from schema.py, which re-exports every name."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from repro.catalog.schema_base import PATH_PARAM, Arg, Strict, inside



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


#: check kinds that read no single metric: their id is the kind itself ("golden"; "reference", the
#: upstream-reference check)
WHOLE_RUN_KINDS = ("golden", "reference")
#: the run's own integrity checks (repro.twin.verdict), which a mutant may name in `kills` but which need
#: not kill a mutant themselves
INTEGRITY_CHECKS = ("step_sequence", "no_divergence")
CHECK_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class TwinCheck(Strict):
    """A check the verdict runs over the twin's metrics (a core field or extra.<key>)."""

    name: str | None = None  # the check's id in a mutant's `kills` (default: check_id)
    kind: Literal["finite", "golden", "value_at_step", "max_at_most", "min_at_least", "final_above",
                  "final_below", "rises", "falls"]
    metric: str = "loss"
    step: int | None = Field(default=None, ge=1)
    value: float | None = None
    tol: float = Field(default=0.0, ge=0)
    window: int = Field(default=5, ge=1)  # steps averaged by final_*/rises/falls
    #: a sanity line: true by construction (e.g. KL 0 at step 1 when policy and reference load one path), so
    #: reported but no proof; the only check exempt from the mutant matrix's "kills a mutant" rule
    sanity: bool = False
    why: str

    @model_validator(mode="after")
    def _needs(self):
        if self.kind == "value_at_step" and (self.step is None or self.value is None):
            raise ValueError("value_at_step needs step and value")
        if self.kind in ("max_at_most", "min_at_least", "final_above", "final_below") and self.value is None:
            raise ValueError(f"{self.kind} needs value")
        if self.name is not None and not CHECK_NAME.match(self.name):
            raise ValueError(f"check name {self.name!r}: lower-case letters, digits and '_'")
        return self

    @property
    def id(self) -> str:
        """What a mutant's `kills` names: `name`, else "golden"/"reference", else "<kind>:<metric>"."""
        if self.name:
            return self.name
        return self.kind if self.kind in WHOLE_RUN_KINDS else f"{self.kind}:{self.metric}"


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


class Mutant(Strict):
    """A named semantic fault the twin's checks must catch (`repro mutate`): a `--set` that breaks a
    semantic the recipe depends on (same shape as negative_control.set), or a fault the trainer injects
    (REPRO_TWIN_FAULT, harness/runtime/faults.py). It is compared step for step with the plain run, so it
    must not change the step count. `kills`: the ids of the checks expected to fail on it."""

    name: str
    why: str
    set: list[Arg] = []
    fault: str | None = None
    kills: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_fault(self):
        if not CHECK_NAME.match(self.name):
            raise ValueError(f"mutant name {self.name!r}: lower-case letters, digits and '_'")
        if bool(self.set) == (self.fault is not None):
            raise ValueError(f"mutant {self.name}: give exactly one of set (argument changes) or fault")
        if self.fault is not None and not CHECK_NAME.match(self.fault):
            raise ValueError(f"mutant {self.name}: fault {self.fault!r} must be a fault name (harness/runtime/faults.py)")
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
    #: the entry point's flag that applies the same value; None where the entry point has no such flag and
    #: the twin's trainer applies the value itself (`why` says where)
    flag: str | None = None
    why: str


#: the hooks harness/upstream_hooks/sitecustomize.py defines (a test holds the two lists equal)
UpstreamHook = Literal["fp32_weights", "seed_before_resize", "cuda_mem_get_info_zero", "map_shard_seed",
                       "mxfp4_dequant_fp32"]


class UpstreamCpuChange(Strict):
    """One change a CPU forces on the real upstream's command at twin scale, with its reason."""

    what: str
    why: str
    set: list[Arg] = []  # entry-point flags set to these values (e.g. --use_flash_attn False)
    drop: list[str] = []  # entry-point flags removed
    env: dict[str, str] = {}  # environment variables (e.g. LOCAL_SIZE for DeepSpeed on CPU)
    # launcher-side hooks (harness/upstream_hooks/sitecustomize.py, the one sitecustomize of an upstream run) applied
    # inside the upstream's processes, where no flag or variable reaches (upstream hard-codes a half dtype; an
    # unseeded draw before the Trainer seeds or in forked map workers; a pinned library's dequant dtype)
    hooks: list[UpstreamHook] = []

    @model_validator(mode="after")
    def _seeded(self):
        if "seed_before_resize" in self.hooks and not self.env.get("REPRO_UPSTREAM_SEED", "").isdigit():
            raise ValueError("hook seed_before_resize needs env REPRO_UPSTREAM_SEED (the twin's --seed)")
        return self


class UpstreamBand(Strict):
    """A declared wider band after a step: where a measured cause (e.g. a chaotic curve amplifying reduction-order
    noise after a gradient spike) makes the strict tolerance unreachable from that step on. `why` gives the
    measurement that shows the cause (the upstream against itself under a semantically neutral change)."""

    after_step: int = Field(ge=1)  # the strict rtol holds on steps 1..after_step, this band on the steps after
    rtol: float = Field(ge=0)
    why: str


class UpstreamTolerance(GoldenMetric):
    """Twin vs upstream for one metric: rtol (with its measured why) on every step, or on steps 1..after.after_step
    with the declared band after; `offset`: the upstream logs this metric that many steps ahead (its value at step s
    is the twin's at step s + offset: transformers 4.48.3 logs the lr after the scheduler has stepped)."""

    after: UpstreamBand | None = None
    offset: int = Field(default=0, ge=0)
    offset_why: str | None = None

    @model_validator(mode="after")
    def _declared(self):
        if self.offset and not self.offset_why:
            raise ValueError("an upstream tolerance with an offset needs offset_why (the measured logging difference)")
        if self.after is not None and self.after.rtol < self.rtol:
            raise ValueError(f"after.rtol {self.after.rtol:g} is below rtol {self.rtol:g}: the band after a step "
                             "widens the strict tolerance, never narrows it")
        return self


class TwinUpstream(Strict):
    """The real upstream at twin scale (repro run ID --scale upstream): the recipe's published command through its
    own launcher, in the pinned checkout and environment, on the twin's assets and geometry."""

    env: str | None = None  # recipes/_upstream/<env>.yaml; default: the one that pins provenance.upstream
    # twin_workdir: the folder holding workdir_files (data); run: the run folder, for an upstream that writes
    # relative to its cwd (reward_modeling.py's runs/<name>/ TensorBoard events), the script by its checkout path
    cwd: Literal["checkout", "twin_workdir", "run"] = "checkout"
    pythonpath: list[str] = []  # folders of the checkout put on the child's PYTHONPATH (python -m from elsewhere)
    # the launcher's own arguments, replacing the twin's CPU overlay when the upstream needs its published launcher
    # as is (open-instruct's DPO/RM run only under --use_deepspeed, which the twin's overlay drops); a config value
    # naming a stored config file gets its path, as the twin's do. Declare why in cpu_changes.
    launcher_args: list[Arg] | None = None
    cpu_blocker: str | None = None  # why the real upstream cannot train on a CPU (measured); the run refuses with it
    cpu_changes: list[UpstreamCpuChange] = []
    logs: list[str] = Field(min_length=1)  # globs under the run folder that `repro parse` reads (train.log, ...)
    # what the logged step counts: optimizer steps, or samples seen (reward_modeling.py writes its TensorBoard
    # scalars at step=episode), turned into optimizer steps by the twin geometry's effective batch
    log_step: Literal["optimizer", "samples"] = "optimizer"
    tolerance: dict[str, UpstreamTolerance] = {}  # twin vs upstream reference, per metric, each with its measured reason


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
    upstream: TwinUpstream | None = None
    mutants: list[Mutant] = []  # semantic faults the checks must catch (repro mutate)
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
        if self.mutants:
            self._mutants_consistent()
        return self

    def _mutants_consistent(self) -> None:
        ids = [c.id for c in self.checks]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"checks {dupes} share an id; give each a `name:` so mutants can name it in kills")
        names = [m.name for m in self.mutants]
        if len(set(names)) != len(names):
            raise ValueError(f"mutant names must be unique, got {sorted({n for n in names if names.count(n) > 1})}")
        known = set(ids) | set(INTEGRITY_CHECKS)
        for m in self.mutants:
            for k in m.kills:
                if k not in known:
                    raise ValueError(f"mutants.{m.name}.kills: {k!r} is not a check of this twin "
                                     f"(ids: {', '.join(sorted(known))})")


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
