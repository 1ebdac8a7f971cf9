"""DeepSpeed engine prints every ``steps_per_print`` steps (``deepspeed/runtime/engine.py``,
``deepspeed/utils/timer.py``).

``[Rank 0] step=N, skipped=K, lr=[1e-05, 1e-05], mom=[(0.9, 0.999), ...]`` (``_report_progress``),
then the ThroughputTimer line, in three generations:
``epoch=E/micro_step=M/global_step=N, RunningAvgSamplesPerSec=.., CurrSamplesPerSec=.., MemAllocated=..GB, MaxMemAllocated=..GB``
(2022+), ``E/M, RunningAvgSamplesPerSec=.., CurrSamplesPerSec=.., MemAllocated=..`` (2022) and
``E/M, SamplesPerSec=.., MemAllocated=..`` (2020). The older two carry no global step, so they
belong to the ``step=`` line printed just before them for the same step.

Samples/s are GLOBAL (the timer's batch size is ``train_batch_size``) and tokens/s would need the
sequence length, so they stay in ``extra`` instead of being guessed into tokens_per_s_per_device.
``MemAllocated`` is ``bytes / 1024**3`` though labelled GB, so it is GiB already.

Several engines in one log (DeepSpeed-Chat step 3 steps the actor, then the critic, and both
print ``step=N``): the k-th ``step=N`` line in a row for the same N is engine k. Engine 0 is the
run's ``train`` series; the others are kept as phase ``train/<name>``, never taken for a
restart. DeepSpeed-Chat names them (engine 0 is the actor it trains, engine 1 the critic) and
prints its own per-PPO-step lines: ``epoch: E|step: S|ppo_ep: P|act_loss: ..|cri_loss: ..``
(step S, 0-based, is engine step S+1) and ``|E2E latency=..s |...|CurSamplesPerSec=.. |AvgSamplesPerSec=..``
(end-to-end samples/s of generation plus training), which are read as well.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from repro.base.metrics import MetricRecord
from repro.verify.parsers._common import ParseIssue, find_rank, put, to_float
from repro.verify.parsers._files import parse_file
from repro.verify.parsers._lines import scan_lines

DESCRIPTION = "DeepSpeed stdout '[Rank 0] step=N, skipped=.., lr=[..]' and '..SamplesPerSec=..' lines"
MARKER = "="

_STEP = re.compile(r"\bstep=(\d+), skipped=(\d+), lr=\[([^\]]*)\]")
_CHAT_STEP = re.compile(r"\bstep: (\d+)\|ppo_ep: (\d+)\|act_loss: ([^|]+)\|cri_loss: ([^|]+)(?:\|unsuper_loss: ([^|\s]+))?")
_CHAT_SPEED = re.compile(r"(E2E latency|Generate time|Training time|CurSamplesPerSec|AvgSamplesPerSec)=([0-9.eE+-]+)")
CHAT_MARKER = "act_loss: "  # a DeepSpeed-Chat step-3 log
_CHAT_LINES = "|"  # its step lines and its E2E timing lines both hold one
_CHAT_ENGINES = ("actor", "critic")
_FIELD = re.compile(r"(\w+)=([^,\s/]+)")
_SNIFF = re.compile(r"\bstep=\d+, skipped=\d+, lr=\[|SamplesPerSec=")

#: ThroughputTimer key -> (record attribute or extra key, strip suffix)
_SPEED = {
    "CurrSamplesPerSec": "extra.samples_per_s",
    "RunningAvgSamplesPerSec": "extra.samples_per_s_running_avg",
    "SamplesPerSec": "extra.samples_per_s_running_avg",
    "MemAllocated": "extra.memory_allocated_gib",
    "MaxMemAllocated": "memory_gib",
}

UNITS = {"memory_gib": "DeepSpeed 'MaxMemAllocated=..GB' is bytes/1024**3, i.e. GiB; taken as memory_gib"}


def sniff(name: str, head: str) -> float:
    """Weighted down: DeepSpeed runs underneath accelerate/HF/Megatron, so its lines also appear
    in those logs, where the framework's own lines must win."""
    return len(_SNIFF.findall(head)) / 4


def make_line_parser(names: tuple[str, ...] = ()) -> Callable[[str], MetricRecord | None]:
    """A parser with two pieces of state: the last ``step=`` seen (old throughput lines need it)
    and the engine that printed it (the k-th ``step=N`` line in a row is engine k)."""
    last: list = [None, 0, None, None, None]  # step, engine, DeepSpeed-Chat step (1-based), rank, (skipped, lr)

    def parse_line(line: str) -> MetricRecord | None:
        if "E2E latency=" in line:
            return None  # DeepSpeed-Chat's own line: the second pass reads it, after its step line
        if "SamplesPerSec=" in line:
            rec = _speed_record(line, last[0])
            rec.phase = _phase(last[1], names)
            return rec
        found = _STEP.search(line)
        if found is None:
            return None
        rec = _step_record(line, found)
        # another engine: same step, same rank, other values (a repeated line is a doubled handler,
        # another rank is another rank; both are the normaliser's to report)
        again = rec.step == last[0] and rec.rank == last[3] and found.group(2, 3) != last[4]
        engine = last[1] + 1 if again else 0
        rec.phase = _phase(engine, names)
        last[0], last[1], last[3], last[4] = rec.step, engine, rec.rank, found.group(2, 3)
        return rec

    def parse_chat_line(line: str) -> MetricRecord | None:
        if "E2E latency=" in line:
            return _chat_speed_record(line, last[2])
        found = _CHAT_STEP.search(line)
        if found is None:
            return None
        step, ppo_epoch, actor, critic, unsuper = found.groups()
        rec = MetricRecord(step=int(step) + 1, loss=to_float(actor),
                           extra={"critic_loss": to_float(critic), "ppo_epoch": float(ppo_epoch)})
        if unsuper is not None:
            rec.extra["unsupervised_loss"] = to_float(unsuper)
        last[2] = rec.step
        return rec

    parse_line.chat = parse_chat_line  # type: ignore[attr-defined]
    return parse_line


def _phase(engine: int, names: tuple[str, ...]) -> str:
    if engine == 0:
        return "train"
    return f"train/{names[engine]}" if engine < len(names) else f"train/engine{engine}"


def _chat_speed_record(line: str, step: int | None) -> MetricRecord:
    """DeepSpeed-Chat's end-to-end timing line, for the PPO step printed just before it."""
    if step is None:
        raise ValueError("E2E timing line before any 'step: N|ppo_ep:' line")
    fields = dict(_CHAT_SPEED.findall(line))
    if "CurSamplesPerSec" not in fields:
        raise ValueError("no CurSamplesPerSec value")
    rec = MetricRecord(step=step, extra={"samples_per_s_e2e": to_float(fields["CurSamplesPerSec"])})
    for key, name in (("AvgSamplesPerSec", "samples_per_s_e2e_avg"), ("E2E latency", "e2e_latency_s"),
                      ("Generate time", "generate_time_s"), ("Training time", "training_time_s")):
        if key in fields:
            rec.extra[name] = to_float(fields[key])
    return rec


def _step_record(line: str, found: re.Match) -> MetricRecord:
    """One lr per param group; the first is the schedule, the others only if they differ."""
    step, skipped, lrs = found.groups()
    rates = [to_float(x) for x in lrs.split(",") if x.strip()]
    rec = MetricRecord(step=int(step), rank=find_rank(line), extra={"skipped_steps": float(skipped)})
    if rates:
        rec.lr = rates[0]
        if any(r != rates[0] for r in rates):
            rec.extra.update({f"lr_group_{i}": r for i, r in enumerate(rates)})
    return rec


def _speed_record(line: str, last_step: int | None) -> MetricRecord:
    fields = dict(_FIELD.findall(line))
    if "global_step" in fields:
        step = int(fields["global_step"])
    elif last_step is not None:
        step = last_step
    else:
        raise ValueError("throughput line without global_step and no earlier 'step=' line")
    rec = MetricRecord(step=step, rank=find_rank(line))
    for key, target in _SPEED.items():
        if key in fields:
            put(rec, target, to_float(fields[key].removesuffix("GB")))
    if not rec.extra and rec.memory_gib is None:
        raise ValueError("no SamplesPerSec value")
    return rec


def parse_lines(lines, source: str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    lines = list(lines)
    chat = any(CHAT_MARKER in line for line in lines)
    parser = make_line_parser(_CHAT_ENGINES if chat else ())
    records, issues = scan_lines(lines, source, MARKER, parser, UNITS)
    if chat:
        more, more_issues = scan_lines(lines, source, _CHAT_LINES, parser.chat)
        records, issues = _merge_streams(records, more, source), issues + more_issues
    return _note_engines(records, issues, source, chat)


def parse(path: Path | str) -> tuple[list[MetricRecord], list[ParseIssue]]:
    chat = _mentions(path, CHAT_MARKER)
    parser = make_line_parser(_CHAT_ENGINES if chat else ())
    records, issues = parse_file(path, MARKER, parser, UNITS)
    if chat:
        more, more_issues = parse_file(path, _CHAT_LINES, parser.chat)
        records, issues = _merge_streams(records, more, str(path)), issues + more_issues
    return _note_engines(records, issues, str(path), chat)


def _mentions(path: Path | str, marker: str) -> bool:
    with open(path, "rb") as fh:
        return marker.encode() in fh.read(4 << 20)


def _merge_streams(records: list[MetricRecord], chat: list[MetricRecord], source: str) -> list[MetricRecord]:
    """Fold DeepSpeed-Chat's per-PPO-step values into the engine record of the same step when
    they share no field; the rest go in line order (records carry their line in ``source``)."""
    by_step = {(r.phase, r.step): r for r in records}
    rest = []
    for rec in chat:
        target = by_step.get((rec.phase, rec.step))
        if target is not None and not _overlap(target, rec):
            _fold(target, rec)
        else:
            rest.append(rec)
    merged = records + rest
    merged.sort(key=lambda r: int(r.source.rpartition(":")[2]) if r.source else 0)
    return merged


def _overlap(a: MetricRecord, b: MetricRecord) -> bool:
    return any(getattr(a, f) is not None and getattr(b, f) is not None
               for f in ("loss", "lr", "memory_gib")) or bool(a.extra.keys() & b.extra.keys())


def _fold(into: MetricRecord, rec: MetricRecord) -> None:
    for name in ("loss", "lr", "memory_gib"):
        if getattr(rec, name) is not None:
            setattr(into, name, getattr(rec, name))
    into.extra.update(rec.extra)


def _note_engines(records: list[MetricRecord], issues: list[ParseIssue], source: str,
                  chat: bool) -> tuple[list[MetricRecord], list[ParseIssue]]:
    """Say, once, that several engines share the log and which one is the run's series."""
    others = sorted({r.phase for r in records if r.phase.startswith("train/")})
    if others:
        first = "the actor (DeepSpeed-Chat trains it; the critic is stepped after it)" if chat else "engine 0"
        issues.append(ParseIssue(source, None, "skipped",
                                 f"{len(others) + 1} DeepSpeed engines print 'step=' lines in this log; the run's "
                                 f"series is {first}; the others are kept apart as {', '.join(others)}"))
    return records, issues
