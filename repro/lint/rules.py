"""Lint the published text (what a user would paste) and the pinned runnable recipe.

`lint_published` reads the seed's blocks with bash semantics (repro.plan.shell) and the entry point's
flag schema at the pinned commit, and reports what would go wrong before a GPU-hour is spent.
`lint_recipe` holds the runnable recipe to its own contract: known flags, consistent geometry,
every difference from the published text explained, stored configs consistent with the topology.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from repro.catalog import effective
from repro.catalog import loader as catalog
from repro.base.errors import ReproError
from repro.inputs import read_text
from repro.catalog import derive
from repro.catalog import flagschema
from repro.lint.chain_paths import check_paths
from repro.lint.invocation import Invocation, Option, split_invocation  # noqa: F401 (re-exported)
from repro.plan import rescale
from repro.lint import contract
from repro.plan import shell
from repro.plan.render import quote as render_quote
from repro.plan.render import render
from repro.catalog.schema import PublishedBlock, Recipe



@dataclass(frozen=True)
class Finding:
    code: str
    severity: str  # error | warning
    recipe: str
    file: str  # the seed file (published text) or the recipe file
    line: int | None
    message: str

    def to_json(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.severity}: {self.code}: {self.message} [{self.recipe}]"


# ---------------------------------------------------------------------------------------------
# published text


def block_format(block: PublishedBlock) -> str:
    if block.format != "auto":
        return block.format
    lines = [ln for ln in block.text.split("\n") if ln.strip()]
    if lines and all(ln.lstrip().startswith("|") for ln in lines):
        return "table"
    try:
        data = yaml.safe_load(block.text)
    except yaml.YAMLError:
        data = None
    if isinstance(data, dict) and not re.search(r"^\s*(accelerate|python|torchrun|deepspeed|export)\b", block.text, re.M):
        return "yaml"
    return "shell"


def _schemas_for(recipe: Recipe):
    schemas = flagschema.load_schemas()
    out = {}
    for role, sid in (("launcher", recipe.command.launcher.schema_id), ("entry", recipe.command.entry.schema_id)):
        if sid and sid in schemas:
            out[role] = (schemas[sid], flagschema.all_flags(sid, schemas))
    return out


def _schema_findings(recipe: Recipe, file: str) -> list[Finding]:
    schemas = flagschema.load_schemas()
    out = []
    launcher = recipe.command.launcher
    for role, sid in (("launcher", launcher.schema_id), ("entry", recipe.command.entry.schema_id)):
        if role == "launcher" and launcher.kind == "python" and not launcher.args:
            continue  # plain `python script.py`: no launcher flags to check
        if not sid:
            out.append(Finding("no-flag-schema", "warning", recipe.id, file, None,
                               f"the {role} has no flag schema id, so its flags cannot be checked"))
        elif sid not in schemas:
            out.append(Finding("no-flag-schema", "error", recipe.id, file, None,
                               f"{role} schema '{sid}' is not in recipes/_entrypoints/"))
    return out


def _flag_findings(recipe: Recipe, file: str, options: list[tuple[str, list[str], int | None]],
                   schema: flagschema.EntrySchema, flags: dict[str, flagschema.FlagSpec]) -> list[Finding]:
    """Unknown, ambiguous and badly-valued flags, judged by the pinned parser's own rules."""
    out = []
    dropped = "silently ignores it" if schema.unknown_flags == "ignored" else "exits with an error"
    for flag, values, line in options:
        res = flagschema.resolve(flag, schema, flags)
        if res.how == "unknown":
            out.append(Finding("unknown-flag", "error", recipe.id, file, line,
                               f"{flag} is not a flag of {schema.id}; the parser {dropped}"))
        elif res.how == "ambiguous":
            out.append(Finding("ambiguous-flag", "error", recipe.id, file, line,
                               f"{flag} is an ambiguous prefix of {', '.join(res.candidates)} in {schema.id}"))
        else:
            problem = flagschema.value_problem(flags[res.name], values, schema.bool_style)
            if problem:
                out.append(Finding("bad-value", "error", recipe.id, file, line,
                                   f"{flag} {problem} ({schema.id} field {res.name})"))
            if res.how == "abbrev":
                out.append(Finding("abbreviated-flag", "warning", recipe.id, file, line,
                                   f"{flag} only works as an argparse abbreviation of --{res.name}; "
                                   "a new field with the same prefix would break it"))
    return out


def _line_defects(recipe: Recipe, block: PublishedBlock, file: str) -> list[Finding]:
    out = []
    lines = block.text.split("\n")
    for k, text in enumerate(lines):
        n = block.line + k
        if re.search(r"\\[ \t]+$", text):
            out.append(Finding("continuation-trailing-blank", "error", recipe.id, file, n,
                               "blank after the line-continuation backslash: bash ends the command on this "
                               f"line and runs the lines from {n + 1} on as separate commands"))
        elif re.search(r"\\[ \t]#", text):
            out.append(Finding("comment-after-continuation", "error", recipe.id, file, n,
                               "`\\ #`: the backslash escapes a blank, so `#` starts no comment; its words "
                               f"become arguments and the command ends on this line (lines from {n + 1} run "
                               "as separate commands)"))
        elif re.search(r"[^\s\"'\\]\\$", text) and k + 1 < len(lines) and lines[k + 1][:1].strip():
            left = text[:-1].split()[-1]
            right = lines[k + 1].split()[0]
            out.append(Finding("glued-flags", "error", recipe.id, file, n,
                               f"no blank before the continuation backslash: `{left}` and `{right}` on line "
                               f"{n + 1} join into one word `{left}{right}`"))
    return out


def _yaml_block_findings(recipe: Recipe, block: PublishedBlock, file: str) -> list[Finding]:
    data = yaml.safe_load(block.text) or {}
    cp, dp = data.get("parallelism_config_cp_size"), data.get("parallelism_config_dp_shard_size")
    if cp is None or dp is None:
        return []
    world = int(data.get("num_processes", 1)) * int(data.get("num_machines", 1) or 1)
    if int(cp) * int(dp) == world:
        return []
    k = next((i for i, ln in enumerate(block.text.split("\n")) if "parallelism_config_dp_shard_size" in ln), 0)
    return [Finding("cp-dp-world-mismatch", "error", recipe.id, file, block.line + k,
                    f"context-parallel {cp} x data-parallel {dp} = {int(cp) * int(dp)} but the config "
                    f"launches {world} processes; the document itself says cp x dp must equal the GPU count")]


def _prose_findings(recipe: Recipe, file: str) -> list[Finding]:
    out = []
    names = recipe.published.geometry_names
    for prose in recipe.published.prose:
        text = prose.text
        for expr, total in re.findall(r"=\s*(\d+(?:\s*\*\s*\d+)+)\s*=\s*(\d+)", text):
            product = eval_product(expr)
            if product != int(total):
                out.append(Finding("advice-arithmetic", "error", recipe.id, file, prose.line,
                                   f"{expr.strip()} = {product}, not {total}"))
        if prose.kind == "rescaling" and names:
            given = {names[n]: int(v) for n, v in re.findall(r"\b([A-Z_]+)=(\d+)", text) if n in names}
            if {"processes", "per_device", "grad_accum"} <= given.keys():
                got = given["processes"] * given["per_device"] * given["grad_accum"]
                if got != recipe.batch.effective:
                    out.append(Finding("rescale-advice-mismatch", "error", recipe.id, file, prose.line,
                                       f"the advice gives {given['processes']} x {given['per_device']} x "
                                       f"{given['grad_accum']} = {got} sequences per step, not the command's "
                                       f"{recipe.batch.effective}; {_exact_hint(recipe, given['processes'])}"))
        if prose.kind == "hardware":
            for count in {int(c) for c in re.findall(r"\b(\d+) GPUs\b", text)}:
                if count != recipe.topology.gpus and count < recipe.topology.gpus:
                    out.append(Finding("hardware-advice-needs-rescale", "warning", recipe.id, file, prose.line,
                                       f"the text says {count} GPUs suffice but the command launches "
                                       f"{recipe.topology.gpus}; run unchanged on {count} GPUs it would train "
                                       f"with {recipe.batch.effective * count // recipe.topology.gpus} sequences "
                                       f"per step; {_exact_hint(recipe, count)}"))
    return out


def eval_product(expr: str) -> int:
    """'64 * 1 * 2' -> 128 (multiplication of integers only; never eval)."""
    product = 1
    for part in expr.split("*"):
        product *= int(part)
    return product


def _exact_hint(recipe: Recipe, gpus: int) -> str:
    result = rescale.solve(recipe, rescale.Request(gpus))
    if isinstance(result, rescale.Geometry):
        return (f"the exact plan on {gpus} GPUs is per-device {result.per_device} x accumulation "
                f"{result.grad_accum} (repro plan {recipe.id} --gpus {gpus})")
    return f"no exact plan exists on {gpus} GPUs ({result.reason})"


@dataclass
class PublishedCommand:
    invocation: Invocation | None
    flags: list[tuple[str, list[str], int | None]]  # (flag, values, line) of the entry point
    launcher_flags: list[tuple[str, list[str], int | None]]
    script: shell.Script | None


def repair(text: str) -> str:
    """The block as its author meant it: the three whitespace defects undone, nothing else.

    Line defects are reported on the raw text; flags are judged on the intended command, so one
    stray blank does not hide every flag after it from the schema check. Line count is unchanged.
    """
    lines = text.split("\n")
    for k, line in enumerate(lines):
        line = re.sub(r"\\[ \t]+$", "\\\\", line)  # blank after the continuation backslash
        line = re.sub(r"\\[ \t]#.*$", "\\\\", line)  # `\ # comment` meant as a comment
        if re.search(r"[^\s\"'\\]\\$", line) and k + 1 < len(lines) and lines[k + 1][:1].strip():
            line = line[:-1] + " \\"  # missing blank before the backslash
        lines[k] = line
    return "\n".join(lines)


def published_command(recipe: Recipe) -> PublishedCommand:
    """The launcher invocation the published shell blocks mean (variables carried between blocks)."""
    schemas = _schemas_for(recipe)
    launcher_flags = schemas.get("launcher", (None, None))[1]
    variables: dict[str, str] = {}
    found: Invocation | None = None
    last = None
    for block in recipe.published.blocks:
        if block_format(block) != "shell":
            continue
        script = shell.parse(repair(block.text), block.line, variables)
        variables, last = script.variables, script
        for cmd in script.commands:
            inv = split_invocation(cmd, launcher_flags)
            if inv and found is None:
                found = inv
    if found is not None:
        return PublishedCommand(
            found,
            [(o.name, o.value_texts, o.flag.line) for o in found.entry_args],
            [(o.name, o.value_texts, o.flag.line) for o in found.launcher_options],
            last,
        )
    # No launcher in the text (Fast-LLM publishes `export *_ARGS="--flag=value ..."` blocks)
    flags = []
    for block in recipe.published.blocks:
        if block_format(block) != "shell":
            continue
        for k, text in enumerate(block.text.split("\n")):
            if text.lstrip().startswith("#"):
                continue
            for tok in text.split():
                if tok.startswith("--"):
                    name, _, value = tok.partition("=")
                    flags.append((name, [value] if value else [], block.line + k))
    return PublishedCommand(None, flags, [], last)


def _variable_findings(recipe: Recipe, file: str, pub: PublishedCommand) -> list[Finding]:
    if pub.invocation is None:
        return []
    inv = pub.invocation
    words = [o.flag for o in inv.launcher_options] + [v for o in inv.launcher_options for v in o.values]
    words += [v for o in inv.entry_args for v in o.values] + ([inv.entry] if inv.entry else [])
    comments = "\n".join(ln for b in recipe.published.blocks for ln in b.text.split("\n") if ln.lstrip().startswith("#"))
    seen, out = set(), []
    for w in words:
        for name in w.unresolved:
            if name in seen or name == "$(...)":
                continue
            seen.add(name)
            where = " (only in a comment)" if re.search(rf"\b{name}=", comments) else ""
            out.append(Finding("undefined-variable", "warning", recipe.id, file, w.line,
                               f"${name} is never set in the published text{where}; unset, bash passes an "
                               "empty string and the flag swallows the next argument"))
    return out


def _stray_findings(recipe: Recipe, file: str, pub: PublishedCommand) -> list[Finding]:
    out = []
    inv = pub.invocation
    if inv:
        for w in inv.strays:
            out.append(Finding("stray-argument", "error", recipe.id, file, w.line,
                               f"`{w.text}` is a positional argument the entry point does not take"))
        for o in inv.entry_args + inv.launcher_options:
            if re.fullmatch(r"--[\w-]+:", o.name):
                out.append(Finding("flag-stray-colon", "error", recipe.id, file, o.flag.line,
                                   f"{o.name} has a stray colon: it is not the flag {o.name[:-1]}"))
    return out


def _mkdir_findings(recipe: Recipe, file: str, script: shell.Script | None, output_dir: str | None,
                    line: int | None = None) -> list[Finding]:
    if script is None or not output_dir:
        return []
    expanded = shell.parse(f"echo {output_dir}", 1, script.variables).commands[0].argv[1:]
    output_dir = expanded[0] if expanded else output_dir
    out = []
    for cmd in script.commands:
        argv = cmd.argv
        if argv[:1] == ["mkdir"]:
            targets = [a for a in argv[1:] if not a.startswith("-")]
            if targets and output_dir not in targets:
                out.append(Finding("mkdir-output-mismatch", "warning", recipe.id, file, line or cmd.line,
                                   f"mkdir creates {targets[0]} but --output_dir is {output_dir}"))
    return out


def _logging_findings(recipe: Recipe, file: str, flags: dict[str, list[str]], line: int | None,
                      spec_flags: dict[str, flagschema.FlagSpec] | None) -> list[Finding]:
    """HF-based trainers whose default logging_strategy is 'epoch' ignore --logging_steps alone."""
    if not spec_flags or "logging_strategy" not in spec_flags:
        return []
    if spec_flags["logging_strategy"].default != "epoch":
        return []
    names = {f.lstrip("-") for f in flags}
    if "logging_steps" in names and "logging_strategy" not in names:
        return [Finding("logging-once-per-epoch", "warning", recipe.id, file, line,
                        "--logging_steps is set but logging_strategy defaults to 'epoch' here, so the loss is "
                        "logged once per epoch; add --logging_strategy steps")]
    return []


def lint_published(recipe: Recipe) -> list[Finding]:
    file = recipe.provenance.seed_file
    out = [f for f in _schema_findings(recipe, file)]
    for block in recipe.published.blocks:
        fmt = block_format(block)
        if fmt == "shell":
            out += _line_defects(recipe, block, file)
        elif fmt == "yaml":
            out += _yaml_block_findings(recipe, block, file)
    out += _prose_findings(recipe, file)
    pub = published_command(recipe)
    schemas = _schemas_for(recipe)
    if "entry" in schemas:
        schema, flags = schemas["entry"]
        out += _flag_findings(recipe, file, pub.flags, schema, flags)
        line = next((ln for f, _, ln in pub.flags if f == "--logging_steps"), None)
        out += _logging_findings(recipe, file, {f: v for f, v, _ in pub.flags}, line, flags)
    if "launcher" in schemas and pub.invocation:
        schema, flags = schemas["launcher"]
        out += _flag_findings(recipe, file, pub.launcher_flags, schema, flags)
    out += _variable_findings(recipe, file, pub)
    out += _stray_findings(recipe, file, pub)
    output_dir = next((v[0] for f, v, _ in pub.flags if f == "--output_dir" and v), None)
    out += _mkdir_findings(recipe, file, pub.script, output_dir)
    return _dedupe(out)


def _dedupe(findings: list[Finding]) -> list[Finding]:
    seen, out = set(), []
    for f in findings:
        key = (f.code, f.line, f.message)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return sorted(out, key=lambda f: (f.line or 0, f.code))


# ---------------------------------------------------------------------------------------------
# runnable recipe


def _deviation_covers(recipe: Recipe, flag: str) -> bool:
    return any(d.flag == flag or re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", d.what)
               for d in recipe.command.deviations)


def _coverage_findings(recipe: Recipe, file: str, pub: PublishedCommand) -> list[Finding]:
    """Every difference between the published command and the runnable one needs a deviation."""
    if not pub.flags:
        return []
    out = []
    # the runnable values may use variables its prelude sets: compare what the shell would pass
    prelude_vars = shell.parse("\n".join(recipe.command.prelude), 1, {}).variables if recipe.command.prelude else {}

    def expand(value: str) -> str:
        if "$" not in value or not prelude_vars:
            return value
        words = shell.parse(f"echo {render_quote(value)}", 1, prelude_vars).commands[0].argv[1:]
        return " ".join(words)

    pairs = [(pub.flags, recipe.command.args)]
    if pub.invocation:
        pairs.append((pub.launcher_flags, recipe.command.launcher.args))
    for published, runnable in pairs:
        before = {f: " ".join(v) for f, v, _ in published}
        after = {a.flag: " ".join(expand(v) for v in a.values) for a in runnable if a.flag}
        lines = {f: ln for f, _, ln in published}
        for flag in list(before) + [f for f in after if f not in before]:
            if before.get(flag) != after.get(flag) and not _deviation_covers(recipe, flag):
                was = before.get(flag, "(absent)")
                now = after.get(flag, "(absent)")
                out.append(Finding("undocumented-deviation", "error", recipe.id, file, None,
                                   f"{flag} is {was!r} in the published text (line {lines.get(flag, '-')}) but "
                                   f"{now!r} in the recipe, with no deviation saying why"))
    return out


def _config_findings(recipe: Recipe, file: str) -> list[Finding]:
    out = []
    cli = recipe.command.launcher.args
    cli_procs = next((a.values[0] for a in cli if a.flag == "--num_processes"), None)
    for cfg in recipe.config_files:
        path = catalog.config_file_path(recipe.id, cfg.file)
        if not path.is_file():
            out.append(Finding("config-file", "error", recipe.id, file, None, f"stored config {cfg.file} is missing"))
            continue
        try:
            text = read_text(path)
        except ReproError as exc:  # not UTF-8, a folder, a device: a finding like any other bad config
            out.append(Finding("config-file", "error", recipe.id, file, None, exc.message))
            continue
        try:
            data = json.loads(text) if cfg.format == "json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            out.append(Finding("config-file", "error", recipe.id, file, None, f"{cfg.file} does not parse: {exc}"))
            continue
        if cfg.role != "accelerate" or not isinstance(data, dict):
            continue
        procs = int(cli_procs if cli_procs is not None else data.get("num_processes", 1))
        train = recipe.topology.gpus - recipe.parallel.reserved_gpus
        if procs != train:
            out.append(Finding("config-topology", "error", recipe.id, file, None,
                               f"{cfg.file} launches {procs} processes but the recipe's topology trains on {train}"))
        cp, dp = data.get("parallelism_config_cp_size"), data.get("parallelism_config_dp_shard_size")
        if cp is not None and int(cp) != recipe.parallel.cp:
            out.append(Finding("config-topology", "error", recipe.id, file, None,
                               f"{cfg.file} has cp {cp} but the recipe's parallel.cp is {recipe.parallel.cp}"))
        if cp is not None and dp is not None and int(cp) * int(dp) != procs:
            out.append(Finding("cp-dp-world-mismatch", "error", recipe.id, file, None,
                               f"{cfg.file}: cp {cp} x dp {dp} != {procs} processes"))
    return out


def lint_recipe(recipe: Recipe) -> list[Finding]:
    file = str(catalog.recipe_path(recipe.id).relative_to(catalog.RECIPES_DIR.parent))
    out = _schema_findings(recipe, file)
    schemas = _schemas_for(recipe)
    args = [(a.flag, list(a.values), None) for a in recipe.command.args if a.flag]
    if "entry" in schemas:
        out += _flag_findings(recipe, file, args, *schemas["entry"])
        out += _logging_findings(recipe, file, {f: v for f, v, _ in args}, None, schemas["entry"][1])
    if "launcher" in schemas:
        largs = [(a.flag, list(a.values), None) for a in recipe.command.launcher.args if a.flag]
        out += _flag_findings(recipe, file, largs, *schemas["launcher"])
    for name, stored, computed in derive.mismatches(recipe):
        out.append(Finding("derived-mismatch", "error", recipe.id, file, None,
                           f"derived.{name} is {stored} but the inputs give {computed}"))
    topo = recipe.topology
    geom = rescale.solve(recipe, rescale.Request(topo.gpus, topo.nodes))
    if isinstance(geom, rescale.Refusal):
        out.append(Finding("geometry-roundtrip", "error", recipe.id, file, None,
                           f"the published topology has no exact plan: {geom.reason}"))
    else:
        changes = [c for c in render(recipe, geom).changes
                   if c["flag"] not in ("--machine_rank", "--main_process_ip", "--node_rank", "--master_addr")]
        for c in changes:
            out.append(Finding("geometry-roundtrip", "error", recipe.id, file, None,
                               f"planning the published topology changes {c['flag']} {c['from']} -> {c['to']}: "
                               "the command and the batch/topology fields disagree"))
    pub = published_command(recipe)
    out += _coverage_findings(recipe, file, pub)
    out += _config_findings(recipe, file)
    out += _effective_findings(recipe, file)
    output_dir = next((a.values[0] for a in recipe.command.args if a.flag == "--output_dir" and a.values), None)
    if recipe.command.prelude:
        script = shell.parse("\n".join(recipe.command.prelude), 1, {})
        out += _mkdir_findings(recipe, file, script, output_dir)
    out += _chain_findings(recipe, file)
    out += _contract_findings(recipe, file)
    return _dedupe(out)


def _contract_findings(recipe: Recipe, file: str) -> list[Finding]:
    """What `repro run`/`verify` would refuse (repro/lint/contract.py), reported before anyone runs."""
    out = []
    runner = contract.missing_runner(recipe)
    if runner:
        out.append(Finding("twin-runner", "error", recipe.id, file, None, runner))
    for field, ref in contract.builders(recipe):
        bad = contract.builder_problem(ref)
        if bad:
            out.append(Finding("asset-builder", "error", recipe.id, file, None, f"{field}: {bad}"))
    out += [Finding("twin-override-flag", "error", recipe.id, file, None, m) for m in contract.override_problems(recipe)]
    return out


def _effective_findings(recipe: Recipe, file: str) -> list[Finding]:
    """DeepSpeed "auto" values must be declared as the launcher fills them (repro/catalog/effective.py)."""
    out = []
    for stored in recipe.config_files:
        text = read_text(catalog.config_file_path(recipe.id, stored.file))
        for message in effective.findings(recipe, stored, text):
            out.append(Finding("effective-config", "error", recipe.id, file, None, message))
    return out


def _chain_findings(recipe: Recipe, file: str) -> list[Finding]:
    """A chained stage must read exactly the path its predecessor's command writes (repro.lint.chain_paths)."""
    return [Finding("chain-path", "error", recipe.id, file, None, msg) for msg in check_paths(recipe)]


def lint(recipe: Recipe, published: bool) -> list[Finding]:
    return lint_published(recipe) if published else lint_recipe(recipe)


def format_findings(findings: list[Finding]) -> str:
    return "\n".join(str(f) for f in findings)


def write_json(findings: list[Finding], path: Path) -> None:
    path.write_text(json.dumps([f.to_json() for f in findings], indent=2))
