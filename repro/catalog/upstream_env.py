"""Pinned upstream environments as data (recipes/_upstream/<name>.yaml): one per upstream pin set.

Why data: the full path and the upstream-at-twin-scale lane must install exactly what the pinned commit
needs, into an environment of its own (never repro's), and say so before anything is installed.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from repro import RECIPES_DIR
from repro.catalog.schema_base import Strict
from repro.base.errors import ReproError

SHA40 = re.compile(r"^[0-9a-f]{40}$")
#: one requirement: a distribution name, optional extras, then nothing (unpinned) or ==VERSION or a range
_REQ = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9_,.-]+\])?((==|>=|<=|~=|<|>|!=)[A-Za-z0-9.*+!-]+(,(==|>=|<=|~=|<|>|!=)[A-Za-z0-9.*+!-]+)*)?$")
ENV_DIR = "_upstream"


class CpuChange(Strict):
    """One change a CPU forces on the published command, with its reason (declared, never silent)."""

    what: str
    why: str
    flag: str | None = None  # an entry-point flag set to `value`
    value: str | None = None
    env: dict[str, str] = Field(default_factory=dict)  # or environment variables


class UpstreamEnv(Strict):
    name: str
    repo: str  # owner/name on GitHub
    commit: str
    commit_date: dt.date
    python: str = "3.11"
    exclude_newer: dt.date  # what the upstream leaves unpinned resolves as it was on this day
    packages: list[str]  # requirement lines: exact pins (==) and the unpinned rest
    cuda_packages: list[str] = []  # added on a CUDA machine only (flash-attn, vllm: they build only with CUDA)
    source_on_path: bool = False  # the checkout goes on PYTHONPATH (the upstream is not installed)
    env: dict[str, str] = Field(default_factory=dict)  # environment every upstream run gets
    device: Literal["cpu", "cuda-only"] = "cpu"  # cuda-only: its training asserts a CUDA device
    cuda_reason: str | None = None
    notes: list[str] = Field(default_factory=list)

    @field_validator("commit")
    @classmethod
    def _sha(cls, v: str) -> str:
        if not SHA40.match(v):
            raise ValueError("must be a full 40-hex commit")
        return v

    @field_validator("packages", "cuda_packages")
    @classmethod
    def _reqs(cls, v: list[str]) -> list[str]:
        bad = [r for r in v if not _REQ.match(r)]
        if bad:
            raise ValueError(f"not a requirement (NAME, NAME==X.Y or NAME>=X): {bad[0]!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "UpstreamEnv":
        if self.exclude_newer < self.commit_date:
            raise ValueError(f"exclude_newer {self.exclude_newer} is before the commit date {self.commit_date}")
        if not self.packages:
            raise ValueError("packages: at least one")
        if self.device == "cuda-only" and not self.cuda_reason:
            raise ValueError("a cuda-only environment says why (cuda_reason)")
        return self

    @property
    def snapshot_name(self) -> str:
        """The name a snapshot of this pin carries (../shared/upstream/<owner>+<repo>@<commit>.tar.gz)."""
        return f"{self.repo.replace('/', '+')}@{self.commit}"


def env_paths(root: Path | None = None) -> list[Path]:
    return sorted(((root or RECIPES_DIR) / ENV_DIR).glob("*.yaml"))


def load_env(path: Path) -> UpstreamEnv:
    from repro.catalog.loader import read_yaml, validation_message  # lazy: a later stage or a heavy import, only when this runs

    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ReproError(f"{path}: an upstream environment is a mapping; see recipes/{ENV_DIR}/README.md")
    try:
        env = UpstreamEnv.model_validate(data)
    except ValidationError as exc:
        raise ReproError(validation_message(path, exc)) from None
    if env.name != path.stem:
        raise ReproError(f"{path}: name: {env.name!r} must equal the file name {path.stem!r}")
    return env


@functools.lru_cache(maxsize=None)
def load_envs(root: Path | None = None) -> dict[str, UpstreamEnv]:
    return {p.stem: load_env(p) for p in env_paths(root)}


def env_for(repo: str, commit: str, name: str | None = None, root: Path | None = None) -> UpstreamEnv:
    """The environment a recipe runs in: the one it names, else the one declared for its pinned upstream."""
    envs = load_envs(root)
    if name is not None:
        if name not in envs:
            raise ReproError(f"upstream environment {name!r} is not declared; known: {', '.join(sorted(envs))}")
        env = envs[name]
        if (env.repo, env.commit) != (repo, commit):
            raise ReproError(f"recipes/{ENV_DIR}/{name}.yaml pins {env.repo}@{env.commit[:12]}, "
                             f"not the recipe's {repo}@{commit[:12]}")
        return env
    hits = [e for e in envs.values() if (e.repo, e.commit) == (repo, commit)]
    if len(hits) != 1:
        what = "no" if not hits else f"{len(hits)} ({', '.join(e.name for e in hits)})"
        raise ReproError(f"{repo}@{commit[:12]}: {what} environment under recipes/{ENV_DIR}/ pins it; "
                         "declare one (or name it in the recipe)")
    return hits[0]
