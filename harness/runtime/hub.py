"""Hub ids -> bundled local assets. Twins never download: a name is a bundled asset or a local path.

The twin command writes the run's asset map (REPRO_TWIN_ASSET_MAP): {"models": {hub id: folder},
"datasets": {hub id: file or folder}, "keys": {asset name: content key}} with absolute paths.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from repro.base.contract import ASSET_MAP_ENV
from repro.base.errors import ReproError


@dataclass(frozen=True)
class HubMap:
    models: dict[str, str] = field(default_factory=dict)
    datasets: dict[str, str] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike) -> HubMap:
        p = Path(path)
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ReproError(f"{ASSET_MAP_ENV}={p}: cannot read the twin asset map ({exc})") from None
        root = p.resolve().parent
        resolve = lambda v: str(root / v)  # noqa: E731 - relative entries are relative to the map
        return cls({k: resolve(v) for k, v in raw.get("models", {}).items()},
                   {k: resolve(v) for k, v in raw.get("datasets", {}).items()},
                   dict(raw.get("keys", {})))

    def model(self, name: str, what: str = "model") -> str:
        """A bundled model/tokenizer folder, or an existing local folder."""
        if name in self.models:
            return self.models[name]
        if os.path.isdir(name):
            return name
        raise ReproError(f"{what} {name!r} is neither a local folder nor a bundled twin asset "
                         f"(bundled: {', '.join(sorted(self.models)) or 'none'}; twins never download)")

    def dataset(self, name: str, suffixes: tuple[str, ...] = (".json", ".jsonl")) -> str:
        """A bundled data set, or an existing local file with one of the suffixes."""
        if name in self.datasets:
            return self.datasets[name]
        if name.endswith(suffixes) and os.path.isfile(name):
            return name
        raise ReproError(f"dataset {name!r} is not bundled with the twin and twins never download; "
                         f"known ids: {', '.join(sorted(self.datasets)) or 'none'}")


def load_hub_map() -> HubMap:
    path = os.environ.get(ASSET_MAP_ENV)
    if not path:
        return HubMap()
    if not os.path.isfile(path):
        raise ReproError(f"{ASSET_MAP_ENV} points to a missing file: {path}")
    return HubMap.load(path)
