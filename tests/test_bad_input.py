"""Bad input, class by class: each test feeds the whole class through the CLI (or the one function
every command uses) and holds the contract: one line on stderr naming the option/file/value, exit 2,
never a traceback. Nothing here launches training: every run/golden/equivalence call is refused
before a process starts."""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from repro.catalog import loader as catalog
from repro.cli import main
from repro.base.errors import ReproError
from repro.inputs import read_text

ROOT = Path(__file__).resolve().parent.parent
TWIN_ID = "tulu3-8b-sft"  # has a twin; refused before launch in every case below
NO_TWIN_ID = "tulu3-8b-dpo"  # only ever run at --scale full (refused before launch)


@pytest.fixture
def twinless(monkeypatch):
    """A recipe id whose twin is hidden: `repro run` then plans for the GPUs it detects (or says there are
    none), which is what the nvidia-smi tests are about. Every recipe has a twin, so it is stripped here."""
    real = catalog.get
    monkeypatch.setattr(catalog, "get", lambda rid: real(rid).model_copy(update={"twin": None}))
    return NO_TWIN_ID


def one_line_error(capsys, argv, code=2):
    """Run the CLI; the exit code must be `code` and stderr one 'repro: error:' line."""
    got = main(argv)
    err = capsys.readouterr().err
    assert got == code, (argv, got, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("repro: error:"), (argv, err)
    assert "Traceback" not in err and "internal error" not in err, err
    return lines[0]


# --------------------------------------------------------------------------------------------
# numbers: zero, negative, NaN, inf, not a number


BAD_COUNTS = ["0", "-1", "-0", "nan", "inf", "1.5", "abc", "", " ", "1e400", "0x10", "9" * 40 + "x"]
BAD_SIZES = ["0", "-5", "nan", "NaN", "inf", "-inf", "1e400", "abc", ""]


@pytest.mark.parametrize("value", BAD_COUNTS)
@pytest.mark.parametrize("flag", ["--gpus", "--nodes"])
def test_plan_refuses_every_bad_count(capsys, flag, value):
    argv = ["plan", TWIN_ID, "--gpus", "8", flag, value]
    line = one_line_error(capsys, argv)
    assert flag in line and repr(value) in line


@pytest.mark.parametrize("value", BAD_SIZES)
def test_plan_refuses_every_bad_memory_size(capsys, value):
    line = one_line_error(capsys, ["plan", TWIN_ID, "--gpus", "8", "--gpu-mem", value, "--json"])
    assert "--gpu-mem" in line and capsys.readouterr().out == ""  # no JSON with NaN/Infinity in it


@pytest.mark.parametrize("flag,value", [("--nodes", "0"), ("--gpus", "0"), ("--nodes", "-3")])
def test_run_full_scale_refuses_bad_counts_before_anything_starts(capsys, tmp_path, flag, value):
    argv = ["run", NO_TWIN_ID, "--scale", "full", "--gpus", "8", flag, value, "--out", str(tmp_path / "o")]
    line = one_line_error(capsys, argv)
    assert flag in line
    assert not (tmp_path / "o").exists()


def test_the_request_rule_is_shared_by_every_caller():
    """run/plan/bench all reach rescale.plan_geometry: the rule lives there, not per command."""
    from repro.plan import rescale

    recipe = catalog.get(TWIN_ID)
    for req in (rescale.Request(0), rescale.Request(8, 0), rescale.Request(8, 1, math.nan),
                rescale.Request(8, 1, math.inf), rescale.Request(8, 1, -1.0), rescale.Request(8, 1, 0.0)):
        with pytest.raises(ReproError) as err:
            rescale.plan_geometry(recipe, req)
        assert "\n" not in err.value.message


def test_plan_json_is_standard_json(capsys):
    assert main(["plan", TWIN_ID, "--gpus", "8", "--gpu-mem", "80", "--json"]) == 0

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    json.loads(capsys.readouterr().out, parse_constant=refuse)


@pytest.mark.parametrize("addr", ["a b", "$(reboot)", "host;ls", "", "-x", "a\nb", "`id`"])
def test_main_addr_must_be_a_host(capsys, addr):
    line = one_line_error(capsys, ["plan", TWIN_ID, "--gpus", "16", "--nodes", "2", "--main-addr", addr])
    assert "--main-addr" in line


# --------------------------------------------------------------------------------------------
# --set values that are not shell words


@pytest.mark.parametrize("item", ['learning_rate="1e-4', "learning_rate='x", "learning_rate=a\nb",
                                  "learning_rate=\x00", "learning_rate=\x1b[2J", "noequals", "=1", " =1",
                                  "a b=1", "lr\n=1"])
def test_set_values_that_are_not_shell_words_are_refused_before_launch(capsys, tmp_path, item):
    out = tmp_path / "o"
    line = one_line_error(capsys, ["run", TWIN_ID, "--scale", "twin", "--set", item, "--out", str(out),
                                   "--quiet"])
    assert "--set" in line
    assert not list(out.glob("train/*/metrics.jsonl"))  # nothing trained


# --------------------------------------------------------------------------------------------
# --out that is a file, a device, unwritable or too long


def out_cases(tmp_path: Path) -> list[str]:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    cases = [str(a_file), "/dev/null", str(a_file / "below"), str(tmp_path / ("n" * 300)),
             str(tmp_path / "/".join(["d" * 250] * 20))]
    if os.geteuid() != 0:  # root writes anywhere
        cases.append(str(locked / "run"))
    return cases


@pytest.mark.parametrize("command", [["run", TWIN_ID, "--scale", "twin", "--quiet"],
                                     ["equivalence", TWIN_ID, "--quiet"]])
def test_every_unusable_out_is_one_line(capsys, tmp_path, command):
    for out in out_cases(tmp_path):
        line = one_line_error(capsys, [*command, "--out", out])
        assert "--out" in line or "too long" in line or out[:40] in line


# --------------------------------------------------------------------------------------------
# files that are not UTF-8 or not regular files


def bad_files(tmp_path: Path) -> dict[str, Path]:
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("id: caf\xe9\n".encode("latin-1"))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)))
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    return {"latin1": latin, "binary": binary, "folder": folder, "fifo": fifo, "device": Path("/dev/zero"),
            "missing": tmp_path / "missing.yaml", "too-long": tmp_path / ("x" * 300 + ".yaml")}


def test_read_text_refuses_every_kind_of_bad_file(tmp_path):
    for kind, path in bad_files(tmp_path).items():
        with pytest.raises(ReproError) as err:
            read_text(path)
        assert "\n" not in err.value.message and str(path)[:60] in err.value.message, kind


def test_recipe_and_expected_readers_use_it(tmp_path):
    from repro.verify.claims import load_expected

    for kind, path in bad_files(tmp_path).items():
        with pytest.raises(ReproError):
            catalog.read_yaml(path)
        exp = tmp_path / f"exp-{kind}"
        exp.mkdir()
        target = exp / "tulu3-8b-sft.yaml"
        if kind in ("latin1", "binary"):
            shutil.copy(path, target)
        elif kind == "folder":
            target.mkdir()
        else:
            continue
        with pytest.raises(ReproError) as err:
            load_expected("tulu3-8b-sft", root=exp)
        assert "\n" not in err.value.message


@pytest.mark.parametrize("command", ["parse", "verify"])
def test_logs_that_are_not_regular_files_are_one_line(capsys, tmp_path, command):
    for kind, path in bad_files(tmp_path).items():
        if kind == "folder":
            continue  # a folder is a TensorBoard run: its own message, tested in test_parsers
        argv = ["parse", str(path)] if command == "parse" else ["verify", TWIN_ID, str(path)]
        one_line_error(capsys, argv)


# --------------------------------------------------------------------------------------------
# ids, --version, closed stdout


@pytest.mark.parametrize("argv", [["lint", ""], ["list", "--family", "nope"], ["show", ""], ["show", "x" * 5000],
                                  ["plan", "", "--gpus", "1"], ["verify", "nope", "/dev/null"],
                                  ["verify", "y" * 400, "/dev/null"], ["golden", "record", ""],
                                  ["equivalence", "z" * 300]])
def test_bad_ids_are_refused(capsys, argv):
    line = one_line_error(capsys, argv)
    assert len(line) < 400


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    from repro import __version__

    assert capsys.readouterr().out.strip() == f"repro {__version__}"


def test_closed_stdout_is_quiet():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(f"{sys.executable} -m repro list | head -1", shell=True, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("ID") and proc.stderr == ""


# --------------------------------------------------------------------------------------------
# one broken recipe file must not stop the others


@pytest.fixture()
def catalog_with_a_broken_file(tmp_path, monkeypatch):
    root = tmp_path / "recipes"
    shutil.copytree(ROOT / "recipes" / "tulu3", root / "tulu3")
    shutil.copytree(ROOT / "recipes" / "_entrypoints", root / "_entrypoints")
    (root / "tulu3" / "tulu3-8b-broken.yaml").write_bytes(b"id: tulu3-8b-broken\nfamily: [\xff\n")
    monkeypatch.setattr(catalog, "RECIPES_DIR", root)
    return root


def test_broken_recipe_is_set_aside_and_reported(capsys, catalog_with_a_broken_file):
    assert "tulu3-8b-broken" in catalog.broken() and TWIN_ID in catalog.load_all()
    assert main(["show", TWIN_ID]) == 0
    assert main(["list"]) == 0
    captured = capsys.readouterr()
    assert TWIN_ID in captured.out and "tulu3-8b-broken" in captured.err
    line = one_line_error(capsys, ["show", "tulu3-8b-broken"])
    assert "tulu3-8b-broken.yaml" in line and "unknown recipe" not in line
    assert main(["lint", "--json"]) == 1
    findings = json.loads(capsys.readouterr().out)
    assert any(f["code"] == "recipe-loads" and f["recipe"] == "tulu3-8b-broken" for f in findings)


def test_missing_expected_file_is_reported_as_that(capsys, tmp_path, monkeypatch):
    from repro.verify import claims

    monkeypatch.setattr(claims, "EXPECTED_DIR", tmp_path)  # a checkout where expected/ lacks the file
    log = tmp_path / "m.jsonl"
    log.write_text('{"step": 1, "phase": "train", "loss": 2.0}\n')
    line = one_line_error(capsys, ["verify", TWIN_ID, str(log)])
    assert "no expected file" in line and "unknown recipe" not in line


# --------------------------------------------------------------------------------------------
# every path a recipe names stays inside the project


OUTSIDE = ["/etc/passwd", "../../../etc/passwd", "configs/../../../x", "~/x", "C:\\x", ""]


def _recipe_data() -> dict:
    data = yaml.safe_load(catalog.recipe_path(TWIN_ID).read_text())
    data["twin"] = catalog.merge(catalog.twin_defaults(catalog.recipe_path(TWIN_ID).parent), data["twin"])
    return data


@pytest.mark.parametrize("path", OUTSIDE)
@pytest.mark.parametrize("field", ["config_files.file", "twin.runner", "provenance.seed_file",
                                   "twin.assets.params.text_file"])
def test_paths_outside_the_project_fail_validation(tmp_path, field, path):
    data = _recipe_data()
    if field == "config_files.file":
        data["config_files"][0]["file"] = path
    elif field == "twin.runner":
        data["twin"]["runner"] = path.replace("x", "x.py") if path else path
    elif field == "provenance.seed_file":
        data["provenance"]["seed_file"] = path
    else:
        next(iter(data["twin"]["assets"].values()))["params"]["text_file"] = path
    folder = tmp_path / "tulu3"
    folder.mkdir()
    f = folder / f"{TWIN_ID}.yaml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(ReproError) as err:
        catalog.load_recipe_file(f)
    assert str(f) in err.value.message and "\n" not in err.value.message


def test_a_runner_outside_the_project_fails_lint_and_run(capsys, catalog_with_a_broken_file, tmp_path):
    f = catalog_with_a_broken_file / "tulu3" / f"{TWIN_ID}.yaml"
    f.write_text(f.read_text().replace("runner: harness/", "runner: /tmp/harness/"))
    if "runner: /tmp/harness/" not in f.read_text():  # runner comes from the family defaults
        d = catalog_with_a_broken_file / "tulu3" / "_twin.yaml"
        d.write_text(d.read_text().replace("runner: harness/", "runner: /tmp/harness/"))
    catalog.twin_defaults.cache_clear()
    try:
        line = one_line_error(capsys, ["run", TWIN_ID, "--scale", "twin", "--out", str(tmp_path / "o")])
        assert "runner" in line
        assert main(["lint", "--json"]) == 1
        findings = json.loads(capsys.readouterr().out)
        assert any(f["recipe"] == TWIN_ID and "runner" in f["message"] for f in findings)
    finally:
        catalog.twin_defaults.cache_clear()


# --------------------------------------------------------------------------------------------
# --main-addr reaches every launcher's rendezvous


def test_main_addr_reaches_every_multi_node_command():
    from repro.plan import rescale
    from repro.plan.planner import make_plan

    addr, planned, kinds = "10.1.2.3", 0, set()
    for recipe in catalog.load_all().values():
        topo = recipe.topology
        for gpus, nodes in ((16, 2), (topo.gpus, topo.nodes), (2 * topo.gpus, 2)):
            if nodes < 2:
                continue
            try:
                plan = make_plan(recipe, rescale.Request(gpus, nodes), addr)
            except ReproError:
                continue
            kind = recipe.command.launcher.kind
            kinds.add(kind)
            if kind in ("deepspeed", "python"):  # one command for all nodes: hostfile / Ray head
                assert any(addr in v for v in plan["files"].values()) or any(addr in n for n in plan["notes"])
            else:
                assert all(addr in node["shell"] for node in plan["commands"]), (recipe.id, kind)
            assert not any("$HOST_NODE_ADDR" in node["shell"] for node in plan["commands"]), recipe.id
            planned += 1
            break
    assert planned >= 10 and {"torchrun", "accelerate"} <= kinds


def test_without_main_addr_the_placeholder_is_the_one_the_note_names():
    from repro.plan import rescale
    from repro.plan.planner import make_plan

    plan = make_plan(catalog.get("fastllm-mistral-7b-pretrain"), rescale.Request(128, 16))
    assert all("MAIN_NODE_ADDR:29500" in n["shell"] for n in plan["commands"])
    assert any("MAIN_NODE_ADDR" in n for n in plan["notes"])


# --------------------------------------------------------------------------------------------
# nvidia-smi printing something unexpected, through the CLI


SMI_OUTPUTS = {
    "garbage": "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
    "na-memory": "NVIDIA H100 80GB HBM3, [N/A]",
    "header": "name, memory.total [MiB]\nNVIDIA H100 80GB HBM3, 81559",
    "half-row": "NVIDIA H100 80GB HBM3, 81559\nNVIDIA H100 80GB HBM3",
    "nan": "NVIDIA H100 80GB HBM3, nan",
    "inf": "NVIDIA H100 80GB HBM3, inf",
    "zero": "NVIDIA H100 80GB HBM3, 0",
    "negative": "NVIDIA H100 80GB HBM3, -1",
    "empty": "",
    "binary": None,
}


@pytest.mark.parametrize("case", sorted(SMI_OUTPUTS))
def test_unexpected_nvidia_smi_output_means_no_gpu(capsys, tmp_path, monkeypatch, case, twinless):
    smi = tmp_path / "nvidia-smi"
    text = SMI_OUTPUTS[case]
    if text is None:
        (tmp_path / "out.bin").write_bytes(b"\xff\xfe\x00garbage\x80")
        smi.write_text(f"#!/bin/sh\ncat {tmp_path / 'out.bin'}\n")
    else:
        (tmp_path / "out.txt").write_text(text)
        smi.write_text(f"#!/bin/sh\ncat {tmp_path / 'out.txt'}\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("REPRO_FORCE_CPU", raising=False)
    assert main(["run", twinless]) == 0
    captured = capsys.readouterr()
    assert "no GPU on this machine" in captured.out and captured.err == ""


def test_a_failing_nvidia_smi_means_no_gpu(capsys, tmp_path, monkeypatch, twinless):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 81559'\nexit 9\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("REPRO_FORCE_CPU", raising=False)
    assert main(["run", twinless]) == 0
    assert "no GPU on this machine" in capsys.readouterr().out


def test_a_sane_nvidia_smi_plans_for_its_gpus(capsys, tmp_path, monkeypatch, twinless):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + "".join("echo 'NVIDIA H100 80GB HBM3, 81559'\n" for _ in range(8)))
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("REPRO_FORCE_CPU", raising=False)
    assert main(["run", twinless]) == 0
    out = capsys.readouterr().out
    assert "8 GPU(s)" in out and "plan only" in out
