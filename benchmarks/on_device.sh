#!/usr/bin/env bash
# One short, prepared run of every accelerator check, for a session that is lent a GPU (or an Ascend NPU) for a
# few minutes: the kernels' correctness on the device, the kernel benchmark forward and train, the training
# throughput benchmark (fp32 next to HF transformers, plus the workbench in bf16 autocast with MFU against the
# catalog peak), and the kernel tests with WORKBENCH_TEST_DEVICE set. Each step has its own time limit and the
# script goes on when one fails, so a single call brings back everything that ran.
#
#   bash benchmarks/on_device.sh [cuda|npu|cpu]      # cpu: a dry run of the script itself at toy sizes (~1 min)
#
# Everything fits in BUDGET seconds (default 540: give the device tool timeout_s=600). Writes to $OUT (the device
# tool's folder) or runs/on_device: log.txt (all output), info.json, kernels_check.txt, kernels_forward.json,
# kernels_train.json, train_throughput.json, pytest.txt. Runs from a plain checkout with the machine's own python
# (PYTHON=...). It needs torch; without transformers the training benchmark times the workbench alone (HF fields
# null), without plotly the kernel benchmarks skip their charts (only their JSON comes back anyway), and without
# pytest the kernel tests are skipped, saying so. Missing pure-Python packages can travel as wheels in .whl/
# (untracked; the device tool copies untracked files that git does not ignore), unpacked into /tmp/site first.
# Nothing fills .whl/ by itself: before the device call, on a machine with the network, run (~13 MB)
#   .venv/bin/pip download --no-deps --only-binary=:all: -d .whl \
#       plotly narwhals packaging pytest pluggy iniconfig pygments setuptools
# for the kernel charts and the kernel tests (setuptools: torch.compile's C++ builds in them). transformers is not
# pure Python: it cannot travel this way.
# Record the numbers, with the date and the machine, in benchmarks/README.md.
set -u
DEVICE=${1:-cuda}
OUT=${OUT:-runs/on_device}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
START=$(date +%s); BUDGET=${BUDGET:-540}  # seconds for the whole script: the device tool allows 600 per call
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  # a pure-Python wheel unpacked is an installed package (pip may be missing there): no network, no pip
  for w in .whl/*.whl; do "$PY" -m zipfile -e "$w" /tmp/site || echo "=== could not unpack $w" | tee -a "$OUT/log.txt"
  done
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if [ "$DEVICE" = cpu ]; then  # the dry run: every step at a toy size (one training step of 1 x 32 tokens, one MoE E)
  SIZES=tiny; REPEATS=1; EXPERTS=8; CASES=glm4-dense; TRAIN_SHAPE=(--batch-size 1 --seq-len 32 --steps 1 --warmup 1)
else SIZES=large; REPEATS=5; EXPERTS=8,16,32,64; TRAIN_SHAPE=(--steps 6)
  CASES=glm4-dense,glm4-small-dense,glm45-tiny,glm5-tiny,glm5-tiny-s1024,glm5-tiny-s2048; fi

step() {  # step NAME SECONDS COMMAND...: run one check with its own limit, log it, never stop the script
  local name=$1 limit=$2; shift 2
  local left=$((START + BUDGET - $(date +%s)))
  if [ "$left" -lt 15 ]; then echo "=== $name: skipped, the ${BUDGET}s budget is spent" | tee -a "$OUT/log.txt"; return; fi
  [ "$limit" -gt $((left - 5)) ] && limit=$((left - 5))  # 5 s kept for a KILL if the step ignores the TERM
  echo "=== $name ($(date -u +%H:%M:%S) UTC, limit ${limit}s): $*" | tee -a "$OUT/log.txt"
  timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$OUT/log.txt"
  echo "=== $name: exit ${PIPESTATUS[0]}" | tee -a "$OUT/log.txt"
}

step machine 30 bash -c "nvidia-smi 2>/dev/null || npu-smi info 2>/dev/null || lscpu | head -20; $PY -c 'import torch; print(torch.__version__)'"
step info 60 bash -c "$PY -m workbench info --device $DEVICE --json > $OUT/info.json"
# the training numbers first: they are the most valuable result of a few lent minutes, and the script rewrites its
# JSON after every case, so a step cut off by its limit still brings back the cases that finished
step train-throughput 240 "$PY" benchmarks/train_throughput.py --device "$DEVICE" "${TRAIN_SHAPE[@]}" \
  --cases "$CASES" --out "$OUT/train_throughput.json"
step kernels-check 120 bash -c "$PY -m workbench kernels check --device $DEVICE > $OUT/kernels_check.txt"
for mode in forward train; do
  step "kernels-bench-$mode" 120 "$PY" benchmarks/kernels.py --device "$DEVICE" --sizes "$SIZES" --mode "$mode" \
    --repeats "$REPEATS" --moe-experts "$EXPERTS" --skip-check --out "$OUT/kernels_$mode"
  # only the JSON comes back (the device tool returns at most 8 files): move it up, drop the HTML chart
  mv -f "$OUT/kernels_$mode/kernels_bench.json" "$OUT/kernels_$mode.json" 2>/dev/null
  rm -rf "$OUT/kernels_$mode"
done
if "$PY" -c 'import pytest' 2>/dev/null; then
  step kernel-tests 120 bash -c "WORKBENCH_TEST_DEVICE=$DEVICE $PY -m pytest -q -x tests/test_kernels.py \
    tests/test_kernels_triton_cases.py > $OUT/pytest.txt 2>&1"
else  # said in the log and in pytest.txt, not a bare "No module named pytest" in the file alone
  echo "=== kernel-tests: kernel tests skipped: pytest is not installed for $PY (see .whl/ at the top)" \
    | tee -a "$OUT/log.txt" "$OUT/pytest.txt"
fi
echo "done: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$OUT/log.txt"
