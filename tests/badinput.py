"""Bad input as data: token pools, file mutations and the one outcome check, shared by the hypothesis
fuzz tests (tests/test_fuzz.py) and the newcomer battery (tests/benchmarks/bench_bad_input.py).

The contract checked for every case: no exception escapes `repro.cli.main`, the exit code is 0, 1
or 2, an error is one 'repro: error:' line, and no internal error. Commands that could start
training (run, equivalence, golden) always get an --out that is a file (and, for run, a --nodes
that is refused), so every generated case stops before a process is launched.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from repro.cli import main

RECIPE_IDS = ["tulu3-8b-sft", "tulu3-8b-dpo", "fastllm-mistral-7b-pretrain", "toolgen-llama3-8b-e2e",
              "fms-llama2-7b-sft-fsdp", "tulu3-70b-rlvr", "acerag-llama2-7b-pretrain"]
BAD_IDS = ["", " ", "nope", "TULU3-8B-SFT", "tulu3-8b-sft ", "../recipes/tulu3/tulu3-8b-sft", "x" * 300,
           "\x00", "tulu3-8b-sft\n", "-", "--", "é", "🙂", "$(id)", "tulu3/../tulu3-8b-sft"]
NUMBERS = ["0", "-1", "1", "8", "16", "3", "nan", "inf", "-inf", "1e400", "abc", "", " ", "0x10", "1.5", "-0",
           "9" * 30, "1_000", "NaN", "+4"]
BAD_COUNTS = ["0", "-1", "abc", "", "nan", "-0", "1.5", "inf"]
HOSTS = ["10.0.0.1", "node-0", "a b", "$(reboot)", "", "::1", "[::1]", "-x", "host;ls", "x" * 300, "\n"]
SETS = ["learning_rate=1e-4", 'learning_rate="1e-4', "learning_rate=a\nb", "noequals", "=1", "a b=1",
        "learning_rate=\x00", "max_train_steps=", "lr='x", "--lr=1"]
FORMATS = ["open_instruct_stdout", "wandb_csv", "megatron_stdout", "nope", "", "repro_metrics"]
GPUS = ["H100-SXM", "NVIDIA H100 80GB HBM3", "V100", "nope", "", "x" * 200]
COMMANDS = ["list", "show", "plan", "lint", "parse", "verify", "run", "equivalence", "golden"]


@dataclass
class Outcome:
    code: int | None
    stderr: str
    exception: BaseException | None

    def problems(self) -> list[str]:
        """What breaks the contract (empty when the outcome is fine)."""
        out = []
        if self.exception is not None:
            out.append(f"traceback: {type(self.exception).__name__}: {self.exception}")
            return out
        if self.code not in (0, 1, 2):
            out.append(f"exit code {self.code}")
        if "Traceback" in self.stderr:
            out.append("traceback on stderr")
        if "internal error" in self.stderr:
            out.append(f"internal error: {self.stderr.strip()[:300]}")
        if self.code == 2:
            lines = [ln for ln in self.stderr.splitlines() if ln.strip()]
            errors = [ln for ln in lines if ln.startswith("repro: error:")]
            if len(errors) != 1:
                out.append(f"{len(errors)} error lines: {self.stderr.strip()[:300]}")
        return out


def outcome(argv: list[str]) -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except SystemExit as exc:  # argparse --help / --version
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except BaseException as exc:  # noqa: BLE001 - exactly what the contract forbids
        return Outcome(None, err.getvalue(), exc)
    return Outcome(code, err.getvalue(), None)


# --------------------------------------------------------------------------------------------
# argv from a random source (hypothesis passes st.randoms(), the battery random.Random(seed))


def argv_for(rng: random.Random, files: dict[str, Path]) -> list[str]:
    """One command line; run/equivalence/golden always stop before training (see module doc)."""
    cmd = rng.choice(COMMANDS)
    rid = rng.choice(RECIPE_IDS) if rng.random() < 0.7 else rng.choice(BAD_IDS)
    a_file = str(files["a_file"])
    logs = [str(p) for k, p in files.items() if k.startswith("log")]
    pick = lambda pool: rng.choice(pool)  # noqa: E731
    extra: list[str] = []
    if cmd == "list":
        argv = ["list"] + (["--family", pick(["tulu3", "nope", "", "fms"])] if rng.random() < 0.6 else [])
        argv += ["--json"] if rng.random() < 0.5 else []
    elif cmd == "show":
        argv = ["show", rid] + (["--json"] if rng.random() < 0.5 else [])
    elif cmd == "plan":
        argv = ["plan", rid, "--gpus", pick(NUMBERS)]
        if rng.random() < 0.6:
            extra += ["--nodes", pick(NUMBERS)]
        if rng.random() < 0.5:
            extra += ["--gpu-mem", pick(NUMBERS)]
        if rng.random() < 0.4:
            extra += ["--main-addr", pick(HOSTS)]
        if rng.random() < 0.5:
            extra += ["--json"]
    elif cmd == "lint":
        argv = ["lint"] + ([rid] if rng.random() < 0.8 else []) + (["--published"] if rng.random() < 0.3 else [])
        argv += ["--json"] if rng.random() < 0.5 else []
    elif cmd == "parse":
        argv = ["parse", *rng.sample(logs, k=rng.randint(1, min(3, len(logs))))]
        if rng.random() < 0.3:
            extra += ["--format", pick(FORMATS)]
        argv += ["--json"] if rng.random() < 0.5 else []
    elif cmd == "verify":
        argv = ["verify", rid, *rng.sample(logs, k=rng.randint(1, min(3, len(logs))))]
        if rng.random() < 0.3:
            extra += ["--hardware", pick(GPUS)]
        if rng.random() < 0.2:
            extra += ["--format", pick(FORMATS)]
        if rng.random() < 0.2:
            extra += ["--reference", pick(logs + [a_file, "/dev/null", "/nonexistent"])]
        if rng.random() < 0.2:
            extra += ["--seeds"]
        if rng.random() < 0.3:
            extra += ["--json"]
    elif cmd == "run":
        argv = ["run", rid, "--out", a_file, "--nodes", pick(BAD_COUNTS), "--quiet"]
        if rng.random() < 0.6:
            extra += ["--scale", pick(["twin", "full", "auto", "nope"])]
        if rng.random() < 0.5:
            extra += ["--gpus", pick(NUMBERS)]
        for _ in range(rng.randint(0, 2)):
            extra += ["--set", pick(SETS)]
    elif cmd == "equivalence":
        argv = ["equivalence", rid, "--out", a_file, "--quiet"]
    else:
        argv = ["golden", pick(["record", "nope"]), rid, "--out", a_file, "--quiet"]
    if rng.random() < 0.1:
        extra.insert(rng.randint(0, len(extra)), pick(["--nope", "-x", "--", "--json=1", "--help"]))
    return argv + extra


# --------------------------------------------------------------------------------------------
# file mutations


MUTANT_VALUES = ["", "-1", "0", "nan", ".inf", "[", "{", "null", "~", "1e999", "'", "\"", "- a", ": b", "yes",
                 "x" * 500, "/etc/passwd", "../../x", "!!python/object:os.system", "&a", "*a", "\t", "[1, 2]"]


def mutate_text(rng: random.Random, text: str) -> bytes:
    """One to three edits of the kinds a hand-edited file gets: a value replaced, a line dropped
    or doubled, a key renamed, the file cut short, a byte that is not UTF-8."""
    lines = text.split("\n")
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(7)
        i = rng.randrange(len(lines)) if lines else 0
        if not lines:
            lines = [""]
        if kind == 0 and ":" in lines[i]:
            key, _, _ = lines[i].partition(":")
            lines[i] = f"{key}: {rng.choice(MUTANT_VALUES)}"
        elif kind == 1:
            del lines[i]
        elif kind == 2:
            lines.insert(i, lines[i])
        elif kind == 3 and ":" in lines[i]:
            key, sep, rest = lines[i].partition(":")
            lines[i] = f"{key}_x{sep}{rest}"
        elif kind == 4:
            lines = lines[: max(1, i)]
        elif kind == 5:
            lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
        else:
            lines.insert(i, rng.choice(MUTANT_VALUES))
    data = "\n".join(lines).encode("utf-8")
    if rng.random() < 0.1:
        pos = rng.randrange(len(data) + 1)
        data = data[:pos] + b"\xff\xfe" + data[pos:]
    return data


def sample_logs() -> dict[str, str]:
    """Small logs in the formats verify reads, each a few steps long."""
    jsonl = "".join(json.dumps({"step": s, "phase": "train", "loss": 2.0 - s / 100, "lr": 1e-5}) + "\n"
                    for s in range(1, 12))
    megatron = "".join(
        f" iteration {s:8d}/ 1000 | consumed samples: {s * 128:10d} | elapsed time per iteration (ms): 1234.5 | "
        f"learning rate: 1.000E-05 | global batch size:   128 | lm loss: {2.0 - s / 100:.6E} | loss scale: 1.0 | "
        "grad norm: 1.0 | number of skipped iterations:   0 | number of nan iterations:   0 |\n" for s in range(1, 12))
    state = json.dumps({"global_step": 10, "log_history": [
        {"step": s, "loss": 2.0 - s / 100, "learning_rate": 1e-5, "epoch": s / 10} for s in range(1, 11)]})
    csv = "_step,train/loss,train/learning_rate\n" + "".join(f"{s},{2.0 - s / 100},1e-5\n" for s in range(1, 12))
    return {"metrics.jsonl": jsonl, "train.log": megatron, "trainer_state.json": state, "wandb.csv": csv}
