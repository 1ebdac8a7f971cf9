#!/usr/bin/env bash
# tools/gpu-check.sh [RESULTS_DIR]: the whole single-GPU lane from a fresh machine, in under 8 minutes.
#
# 1. checks for an NVIDIA GPU (nvidia-smi) and refuses in one line without one;
# 2. makes a virtual environment and installs the project with its extras from PyPI (no
#    constraints-cpu.txt: on a GPU machine the default torch wheel is the CUDA build);
# 3. installs flash-attn only if a wheel exists for this torch/CUDA/Python (never a source build);
#    vLLM only with GPU_CHECK_VLLM=1 (no twin needs it, and its wheel pins its own torch);
# 4. runs the shared-device probe (harness/runtime/shared_probe.py: two ranks on cuda:0 over gloo, every
#    collective the twins use) into RESULTS_DIR/shared-probe.json: the twins with more ranks than GPUs share
#    the device that way;
# 5. runs `repro gpu-ci --upstream`: every twin (all 32 on one GPU: see `repro gpu-ci --dry-run` for each
#    one's layout), then the CUDA-only upstream references in their pinned environments (Fast-LLM @1aa6040,
#    granite CP at fms-hf-tuning PR #642, RLVR with vLLM), with the lane's remaining time as its budget.
#    When time is short the twins come first, then the references in that order (Fast-LLM, granite, RLVR);
#    what does not start in time is NOT-RUN. Everything lands in RESULTS_DIR: nvidia-smi.txt,
#    pip-install.log, pip-freeze.txt, shared-probe.json, gpu-ci.log, one folder and log per twin,
#    upstream/<name>/reference.json, summary.md, summary.json.
# Exit status: 0 when no twin or reference failed, non-zero otherwise (or when a step above failed).
#
# Settings (environment): GPU_CHECK_BUDGET_S (480), GPU_CHECK_TWIN_LIMIT_S (120), GPU_CHECK_VENV
# (.gpu-check-venv in the project), PYTHON (python3), GPU_CHECK_VLLM (unset), GPU_CHECK_UPSTREAM (1; 0 skips
# the upstream references), REPRO_UPSTREAM_SNAPSHOTS (the pinned source tarballs; default ../shared/upstream).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULTS="${1:-${GPU_CHECK_RESULTS:-./gpu-check-results}}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-480}"
TWIN_LIMIT_S="${GPU_CHECK_TWIN_LIMIT_S:-120}"
PYTHON="${PYTHON:-python3}"
VENV="${GPU_CHECK_VENV:-$ROOT/.gpu-check-venv}"
START=$SECONDS

mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
LOG="$RESULTS/gpu-check.log"
: > "$LOG"

say() { printf 'gpu-check: %s\n' "$*" | tee -a "$LOG"; }
die() { say "$*"; exit 1; }
step() { say "[$((SECONDS - START)) s] $*"; }

command -v nvidia-smi > /dev/null 2>&1 ||
    die "no nvidia-smi on PATH: not a GPU machine; the GPU lane never runs CPU twins ('nox -s gpu-ci -- --dry-run' lists it)"
nvidia-smi > "$RESULTS/nvidia-smi.txt" 2>&1 || die "nvidia-smi failed; see $RESULTS/nvidia-smi.txt"
step "GPU: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -n 1)"

step "virtual environment $VENV"
"$PYTHON" -m venv "$VENV" || die "$PYTHON -m venv failed (Debian: apt-get install -y python3-venv)"
VPY="$VENV/bin/python"
pip_install() { "$VPY" -m pip install --disable-pip-version-check -q "$@" >> "$RESULTS/pip-install.log" 2>&1; }
pip_install -U pip || die "pip upgrade failed; see $RESULTS/pip-install.log"
step "torch (CUDA build, from PyPI)"
pip_install torch || die "torch install failed; see $RESULTS/pip-install.log"
step "the project with extras twin,verify,test"
pip_install -e "${ROOT}[twin,verify,test]" || die "project install failed; see $RESULTS/pip-install.log"
"$VPY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' ||
    die "torch $("$VPY" -c 'import torch; print(torch.__version__)') cannot use CUDA here"

if pip_install --only-binary=:all: flash-attn; then
    step "flash-attn: installed from a wheel"
else
    step "flash-attn: no wheel for this torch/CUDA/Python on the registry; skipped (twins use sdpa)"
fi
if [ -n "${GPU_CHECK_VLLM:-}" ]; then
    if pip_install --only-binary=:all: vllm; then step "vllm: installed"; else step "vllm: no wheel; skipped"; fi
else
    step "vllm: skipped (no twin uses it; GPU_CHECK_VLLM=1 installs it)"
fi
"$VPY" -m pip freeze > "$RESULTS/pip-freeze.txt" 2>&1 || true

step "shared-device probe: 2 ranks on cuda:0 over gloo"
if REPRO_SHARED_DEVICE=1 timeout 120 "$VPY" -m torch.distributed.run --nproc_per_node 2 --master_port 29517 \
    "$ROOT/harness/runtime/shared_probe.py" "$RESULTS/shared-probe.json" >> "$LOG" 2>&1; then
    step "shared-device probe: every collective ok"
else
    step "shared-device probe: not every collective works (see $RESULTS/shared-probe.json); twins that share the GPU may fail"
fi
UPSTREAM=()
if [ "${GPU_CHECK_UPSTREAM:-1}" != 0 ]; then
    UPSTREAM=(--upstream)
    pip_install uv || step "uv: install failed; the upstream references will report ERROR"
    export PATH="$VENV/bin:$PATH"  # uv builds the pinned upstream environments
fi

LEFT=$((BUDGET_S - (SECONDS - START) - 15))
[ "$LEFT" -ge 30 ] || die "installing took $((SECONDS - START)) s of the ${BUDGET_S} s budget: no time left for twins"
step "repro gpu-ci: ${LEFT} s left, at most ${TWIN_LIMIT_S} s per twin; upstream references: ${UPSTREAM[*]:-skipped}"
set +e
(cd "$ROOT" && "$VPY" -m repro.cli gpu-ci --out "$RESULTS" --time-limit "$TWIN_LIMIT_S" --budget "$LEFT" \
    "${UPSTREAM[@]}") 2>&1 |
    tee "$RESULTS/gpu-ci.log"
RC=${PIPESTATUS[0]}
set -e
step "done: exit $RC; summary table: $RESULTS/summary.md"
exit "$RC"
