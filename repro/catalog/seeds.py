"""The seed documents the recipes were transcribed from, and the check that they still match.

Recipes carry the published text themselves (CI may not have the seeds); when the seed folder is
present, `compare` proves each block and prose excerpt is character-for-character the seed's.

Authors use `python -m repro.catalog.seeds excerpt SEED FIRST LAST [--prose LINE:KIND ...]` to print a
`published:` section as YAML, so trailing blanks and backslashes survive transcription.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from repro.base.paths import ROOT
from repro.catalog.schema import Recipe


def seeds_dir() -> Path:
    return Path(os.environ.get("REPRO_SEEDS_DIR", ROOT.parent / "shared" / "seeds"))


def seed_lines(seed_file: str, directory: Path | None = None) -> list[str]:
    """Lines of a seed with their line endings, so trailing blanks are kept."""
    path = (directory or seeds_dir()) / seed_file
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def excerpt(lines: list[str], first: int, last: int) -> str:
    """Lines first..last (1-based, inclusive); the final newline is dropped."""
    return "".join(lines[first - 1 : last]).removesuffix("\n")


def compare(recipe: Recipe, directory: Path | None = None) -> list[str]:
    """Mismatches between the recipe's published text and the seed; empty means identical."""
    lines = seed_lines(recipe.provenance.seed_file, directory)
    problems = []
    items = [("blocks", b.line, b.text) for b in recipe.published.blocks]
    items += [("prose", p.line, p.text) for p in recipe.published.prose]
    for kind, line, text in items:
        n = text.count("\n") + 1
        actual = excerpt(lines, line, line + n - 1)
        if kind == "prose":  # prose may be a sentence inside a longer line
            ok = text in "".join(lines[line - 1 : line - 1 + n])
        else:
            ok = actual == text
        if not ok:
            problems.append(f"{recipe.id}: published {kind} at line {line} differs from {recipe.provenance.seed_file}")
    return problems


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    # Literal blocks read best, but YAML cannot keep trailing blanks in them: quote those.
    literal = "\n" in value and not any(line != line.rstrip() for line in value.split("\n"))
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if literal else None)


_Dumper.add_representer(str, _str)


def published_yaml(seed_file: str, ranges: list[tuple[int, int]], prose: list[tuple[int, str, str]]) -> str:
    lines = seed_lines(seed_file)
    doc = {
        "published": {
            "blocks": [{"line": a, "text": excerpt(lines, a, b)} for a, b in ranges],
            "prose": [{"line": n, "kind": k, "text": t} for n, k, t in prose],
        }
    }
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=10_000, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repro.catalog.seeds")
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("excerpt", help="print a published: section for a recipe")
    ex.add_argument("seed")
    ex.add_argument("ranges", nargs="+", help="FIRST LAST pairs of 1-based line numbers")
    ex.add_argument("--prose", action="append", default=[], help="LINE:KIND (whole line) or LINE:KIND:TEXT")
    args = parser.parse_args(argv)
    nums = [int(x) for x in args.ranges]
    if len(nums) % 2:
        parser.error("ranges come in FIRST LAST pairs")
    lines = seed_lines(args.seed)
    prose = []
    for item in args.prose:
        line, kind, *text = item.split(":", 2)
        prose.append((int(line), kind, text[0] if text else lines[int(line) - 1].rstrip("\n")))
    sys.stdout.write(published_yaml(args.seed, list(zip(nums[::2], nums[1::2])), prose))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
