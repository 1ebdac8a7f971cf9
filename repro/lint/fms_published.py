"""What a published fms command runs when bash reads it as written, next to what its author meant.

The recipe's ``command`` is the intended run (each fix a declared deviation). The published text is
read with the suite's bash reader (repro.plan.shell) *without* repairs: a ``\\ #`` turns the comment
into arguments and ends the command, ``--lora_r 8\\`` + newline glues into ``8--lora_alpha``, a blank
after a continuation backslash ends the command early. Unassigned ``$VARIABLES`` take the values the
recipe resolved them to (the block's own comments), so the two argvs differ only by the text's defects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.fms import cli
from repro.catalog.schema import Recipe
from repro.plan import shell
from repro.lint.invocation import split_invocation
from repro.lint.rules import block_format
from repro.plan.render import tokens


@dataclass
class PublishedRun:
    launcher: str  # python / accelerate
    launcher_argv: list[str]  # launcher options before the entry point
    entry: str | None  # tuning/sft_trainer.py or tuning.sft_trainer (None: the launcher got no script)
    trainer_argv: list[str]  # what the trainer receives
    orphans: list[list[str]] = field(default_factory=list)  # later lines bash runs as their own commands
    launcher_strays: list[str] = field(default_factory=list)  # e.g. the " " an escaped blank becomes


def intended_trainer_argv(recipe: Recipe) -> list[str]:
    return tokens(list(recipe.command.args))


def _resolved_variables(recipe: Recipe) -> dict[str, str]:
    """$NAME -> the value the recipe's command gives the flag the published text passes $NAME to."""
    intended = {a.flag: a.values for a in recipe.command.args if a.flag}
    launcher = {a.flag: a.values for a in recipe.command.launcher.args if a.flag}
    out: dict[str, str] = {"HOME": "$HOME"}
    for block in recipe.published.blocks:
        if block_format(block) != "shell":
            continue
        words = shell.parse(block.text, block.line).commands
        for cmd in words:
            argv = cmd.argv
            for i, w in enumerate(argv[:-1]):
                nxt = argv[i + 1]
                name = w.split("=", 1)[0]
                if "=" in w and w.startswith("--"):
                    nxt = w.split("=", 1)[1]
                if nxt.startswith("$") and nxt[1:].replace("{", "").replace("}", "").isidentifier():
                    vals = intended.get(name) or launcher.get(name)
                    if vals:
                        out[nxt.strip("${}")] = vals[0]
    return out


def published_run(recipe: Recipe) -> PublishedRun:
    """The first launcher invocation of the published shell blocks, as bash splits it."""
    variables = _resolved_variables(recipe)
    for block in recipe.published.blocks:
        if block_format(block) != "shell":
            continue
        script = shell.parse(block.text, block.line, dict(variables))
        for k, cmd in enumerate(script.commands):
            inv = split_invocation(cmd, None)
            if inv is None:
                continue
            argv = cmd.argv
            start = 2 if inv.launcher == "accelerate" else 1
            if inv.entry is None:
                return PublishedRun(inv.launcher, argv[start:], None, [],
                                    [c.argv for c in script.commands[k + 1:]])
            idx = next(i for i, w in enumerate(cmd.words) if w is inv.entry)
            launcher_argv = argv[start:idx - 1] if argv[idx - 1] in ("-m", "--module") else argv[start:idx]
            entry = inv.entry.text
            strays: list[str] = []
            # a launcher positional that is no script (" " from an escaped blank) is what accelerate runs
            if inv.launcher == "accelerate" and not (entry.endswith(".py") or argv[idx - 1] in ("-m", "--module")):
                strays = [entry]
            return PublishedRun(inv.launcher, launcher_argv, entry, argv[idx + 1:],
                                [c.argv for c in script.commands[k + 1:]], strays)
    raise ValueError(f"{recipe.id}: no launcher command in the published blocks")


@dataclass
class Verdict:
    """The published command against the intended one, in words a report can print."""

    runs_trainer: bool
    comparison: cli.Comparison | None
    notes: list[str]


def judge(recipe: Recipe) -> Verdict:
    run = published_run(recipe)
    notes: list[str] = []
    if run.launcher_strays:
        notes.append(f"{run.launcher} launch gets {run.launcher_strays[0]!r} as its script: the command ends there "
                     f"and the trainer never starts")
    if run.orphans:
        heads = ", ".join(repr(o[0]) for o in run.orphans if o)
        notes.append(f"bash runs the rest of the block as {len(run.orphans)} separate command(s) ({heads}): command not found")
    if run.launcher_strays or run.entry is None:
        return Verdict(False, None, notes)
    # bash expands a leading ~ to $HOME: the same path, not a difference
    argv = ["$HOME" + w[1:] if w.startswith("~/") else w for w in run.trainer_argv]
    comparison = cli.compare(argv, intended_trainer_argv(recipe))
    parsed = cli.parse(argv)
    if parsed["training_data_path"] is None and parsed["data_config_path"] is None:
        notes.append("tuning.sft_trainer loads the model, then stops: 'Training data path has to be set and str' "
                     "(AssertionError, reported as an unhandled exception, exit 203)")
    return Verdict(True, comparison, notes + comparison.lines())
