#!/usr/bin/env bash
# One check of ldexport on a machine with one GPU, ending in one table:
#
#   tests      the test suite with CUDA present (the `cuda`-marked tests included)
#   bench fp32 scripts/bench_train.py, batch 2 at 1024x1024, fp32, against mmdet 3.3, with
#              ldexport's eager step as a third side (CUDA graphs against eager, one run)
#   bench bf16 the same under bf16 autocast
#   train fp32 `ldexport train` on coco128 (1333x800, batch 16), 3 epochs: images/s
#   train bf16 the same with train.amp=bf16
#   loader     scripts/bench_loader.py: the data pipeline alone, images/s per worker count
#   predict    scripts/bench_predict.py: forward vs post-processing at 800x1344
#   step time  scripts/bench_step_ops.py --device cuda: wall vs GPU busy time of one LD step
#   compile    bench_train.py bf16 with train.compile against the same step not compiled (both
#              replayed as CUDA graphs) and eager, one run: whether compile should default on CUDA;
#              then the same with the student channels-last (train.channels_last)
#
# It runs from a copy of the repository beside ../shared (coco128 and, where mmdet is not
# installed, the Python 3.12 / torch 2.11 wheels of ../shared/device-wheels, installed
# into a temporary folder first, never into the environment). Every step has its own time
# limit, so a hang costs that step only; a step's log stays in the output folder. The
# limits are ceilings (they add up to 30 + 200 + 2 x 80 + 2 x 60 + 40 + 40 + 2 x 90 = 770 s, and
# 2 x 240 s for the compile comparison);
# on an H200 the steps themselves took about 7 minutes (docs/benchmarks.md).
#
# GPU_CHECK_QUICK=1 is the check that fits a short lease (about 3 to 4 minutes): the
# `cuda`-marked tests only, the benchmarks without their memory subprocesses and with
# fewer iterations, `ldexport train` under bf16 only, and no loader step; the compile
# comparison last (two runs of up to 240 s; GPU_CHECK_COMPILE=0 leaves them out).
#
# Usage:
#   bash scripts/gpu_check.sh                # on the GPU machine
#   GPU_CHECK_QUICK=1 bash scripts/gpu_check.sh
#   bash scripts/gpu_check.sh --cpu          # every step on CPU at small sizes (a rehearsal)
#   bash scripts/gpu_check.sh --dry-run      # print the steps and their limits only
# Environment: PYTHON (default: .venv/bin/python if present, else python3), LDEXPORT_SHARED
# (default: ../shared beside the repository), GPU_CHECK_OUT (default: a new temporary folder),
# GPU_CHECK_LIMIT_SCALE (multiplies every limit; for --cpu on a slow machine), GPU_CHECK_COMPILE=1
# (the compile comparison, 2 x 240 s, in the full check too; on by default in the quick one),
# GPU_CHECK_ONLY (space-separated step names, as --dry-run prints them in brackets: run only
# those, and the wheels where mmdet is missing; e.g. the compile comparison in a second
# device call: GPU_CHECK_ONLY="bench_bf16-compile bench_bf16-compile-cl").
set -u

repo=$(cd "$(dirname "$0")/.." && pwd)
shared=${LDEXPORT_SHARED:-$repo/../shared}
mode=gpu
case "${1:-}" in
  --cpu) mode=cpu ;;
  --dry-run) mode=dry ;;
  "") ;;
  *) echo "usage: $0 [--cpu | --dry-run]" >&2; exit 2 ;;
esac
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then PYTHON=$repo/.venv/bin/python; else PYTHON=python3; fi
fi
if [ "$mode" = dry ]; then out=${GPU_CHECK_OUT:-/tmp/gpu_check.OUT}; else
  out=${GPU_CHECK_OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}; mkdir -p "$out"; fi
cd "$repo" || exit 2
export LDEXPORT_COCO128=$shared/data/coco128
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
start_all=$(date +%s)
rows=(); skipped=0
limit_tests=200; limit_bench=80; limit_train=60; limit_predict=40; limit_step=90; limit_compile=240

# step NAME LIMIT_S COMMAND...: runs COMMAND under `timeout`, logs to $out/NAME.log
step() {
  local name=$1 limit=$(($2 * ${GPU_CHECK_LIMIT_SCALE:-1})); shift 2
  skipped=0
  if [ -n "${GPU_CHECK_ONLY:-}" ] && [ "$name" != wheels ] && [[ " $GPU_CHECK_ONLY " != *" $name "* ]]; then
    skipped=1; return 1
  fi
  if [ "$mode" = dry ]; then echo "[$name] limit ${limit}s: $*"; return 0; fi
  echo "[$name] (limit ${limit}s) $*" >&2
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$? t1=$(date +%s)
  last_rc=$rc; last_s=$((t1 - t0))
  [ $rc -eq 124 ] && echo "[$name] TIMED OUT after ${limit}s" >&2
  return $rc
}
status() { case $1 in 0) echo ok ;; 124|137) echo "timeout" ;; *) echo "rc $1" ;; esac; }
# add_row LABEL RESULT: a row of the final table, also printed at once (a cut-short run keeps it)
add_row() {
  [ "$mode" = dry ] || [ "$skipped" = 1 ] && return 0
  rows+=("| $1 | $(status "$last_rc") | ${last_s}s | $2 |")
  echo "${rows[-1]}" >&2
}

if [ "$mode" = cpu ]; then
  device=cpu; size=256; train_cfg=configs/coco128_ld_tiny.yaml; train_batch=4; train_workers=1
  train_extra=(--set data.max_images=16 --set data.scale=[320,192]); epochs=1
  loader_args=(--scale 320 192 --workers 0 1 --epochs 2); predict_args=(--size 256x384 --repeat 2 --cls-bias -4.595 0)
  tests=(tests/model tests/engine/test_cuda.py tests/engine/test_graphs.py tests/engine/test_configs.py)
  bench_iters=(--warmup 1 --iters 2 --memory-iters 1)
  step_args=(); amps=(none bf16)
else
  device=cuda; size=1024; train_cfg=configs/coco128_ld_r18-gflv1-r101.yaml; train_batch=16; train_workers=12
  train_extra=(); epochs=3
  loader_args=(--device cuda --batch-size 16 --workers 4 8 16 --epochs 2)
  predict_args=(--device cuda --size 800x1344 --batch 1 8 --repeat 20)
  tests=(); bench_iters=(--warmup 3 --iters 20 --memory-iters 2 --with-eager)
  step_args=(--device cuda --size 1024 --batch 2 --amp fp32 bf16 --mode eager graph)
  amps=(none bf16)
  if [ "${GPU_CHECK_QUICK:-0}" = 1 ]; then
    tests=(-m cuda tests); bench_iters=(--warmup 2 --iters 10 --memory-iters 0 --with-eager)
    step_args=(--device cuda --size 1024 --batch 2 --amp bf16 --mode eager graph); amps=(bf16)
    limit_tests=150; limit_bench=55; limit_train=90; limit_predict=30; limit_step=60
  fi
fi

# 0. mmdet for the training benchmark: the wheels of ../shared into a temporary folder.
if [ "$mode" = dry ] || ! "$PYTHON" -c "import mmdet, mmcv, mmengine" >/dev/null 2>&1; then
  wheels=$shared/device-wheels
  if step wheels 30 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$out/site" "$wheels"/*.whl; then
    export PYTHONPATH=$PYTHONPATH:$out/site
  fi
  add_row "install mmdet wheels into $out/site" "$(ls "$wheels"/*.whl 2>/dev/null | wc -l) wheels"
fi

# 1. the test suite, CUDA present: xdist when installed, one torch thread a worker (first;
#    in the quick check after the training steps, whose figures a short lease must not lose).
run_tests() {
  local xdist=() timeout_arg=() summary cuda_skips
  "$PYTHON" -c "import xdist" >/dev/null 2>&1 && xdist=(-n 12)
  "$PYTHON" -c "import pytest_timeout" >/dev/null 2>&1 && timeout_arg=(--timeout $((limit_tests - 10)))
  step tests "$limit_tests" "$PYTHON" -m pytest -q -p no:cacheprovider -rs "${xdist[@]}" "${timeout_arg[@]}" "${tests[@]}"
  summary=$(grep -E "(passed|failed|error)" "$out/tests.log" 2>/dev/null | tail -1)
  cuda_skips=$(grep "^SKIPPED.*needs a CUDA device" "$out/tests.log" 2>/dev/null | sed 's/^SKIPPED \[\([0-9]*\)\].*/\1/' | awk '{n += $1} END {print n + 0}')
  add_row "test suite (${xdist[*]:-serial}${tests[*]:+ ${tests[*]}})" "${summary:-no summary} (cuda-marked skipped: ${cuda_skips:-0})"
}
quick=0; [ "${GPU_CHECK_QUICK:-0}" = 1 ] && [ "$mode" != cpu ] && quick=1
[ $quick = 1 ] || run_tests

# 2. the LD step against mmdet, fp32 and bf16 (bench VARIANT LIMIT EXTRA...; the compiled
#    variant comes last, step 7).
bench() {
  local variant=$1 limit=$2; shift 2
  local amp=${variant%%-*}
  step "bench_$variant" "$limit" "$PYTHON" scripts/bench_train.py --device "$device" --amp "$amp" --batch 2 --size "$size" \
    "${bench_iters[@]}" "$@" --out "$out/bench_$variant.json"
  result=$("$PYTHON" - "$out/bench_$variant.json" <<'EOF' 2>/dev/null
import json, sys
r = json.load(open(sys.argv[1]))
s = r["summary"]
line = f"ldexport {s['ldexport']['iters_per_s']:.2f} it/s, mmdet {s['mmdet']['iters_per_s']:.2f} it/s, ratio {r['ratio_iters_per_s']:.2f}x"
for other, label in (("ldexport_uncompiled", "not compiled"), ("ldexport_eager", "eager")):
    if other in s:
        line += f"; {label} ldexport {s[other]['iters_per_s']:.2f} it/s ({r['ratios_to_mmdet'][other]:.2f}x)"
graphs = r.get("cuda_graphs")
if graphs:
    line += f"; {graphs['captured']} graph(s)" + (f", capture FAILED: {graphs['capture_failed']}" if graphs["capture_failed"] else "")
print(line)
EOF
)
  add_row "bench_train.py $variant, batch 2, ${size}x${size}" "${result:-see $out/bench_$variant.log}"
}
for variant in fp32 bf16; do bench "$variant" "$limit_bench"; done

# 3. `ldexport train` on coco128: a random R101 teacher, 3 epochs, images/s from log.jsonl.
if [ "$mode" != dry ] && [[ -z "${GPU_CHECK_ONLY:-}" || "$GPU_CHECK_ONLY" == *train_* ]]; then
  "$PYTHON" - "$train_cfg" "$out/teacher.pth" <<'EOF' >"$out/teacher.log" 2>&1
import sys, torch
from ldexport.config import config_to_dict, load_config
from ldexport.model import build_detector
config = load_config(sys.argv[1])
torch.manual_seed(0)
teacher = build_detector(config.distill.teacher)
torch.save({"format": "ldexport", "model": teacher.state_dict(), "config": {"model": config_to_dict(config.distill.teacher)}}, sys.argv[2])
EOF
fi
for amp in "${amps[@]}"; do
  step "train_$amp" "$limit_train" "$PYTHON" -m ldexport.cli train "$train_cfg" --teacher "$out/teacher.pth" \
    --work-dir "$out/train_$amp" --set "data.root=$LDEXPORT_COCO128" --set model.pretrained=null \
    --set "train.device=$device" --set "train.amp=$amp" --set "train.epochs=$epochs" --set train.eval_interval=0 \
    --set "data.batch_size=$train_batch" --set "data.workers=$train_workers" --set train.log_interval=1 "${train_extra[@]}"
  result=$("$PYTHON" - "$out/train_$amp/log.jsonl" "$epochs" <<'EOF' 2>/dev/null
import json, sys
records = [json.loads(line) for line in open(sys.argv[1])]
train = [r for r in records if r.get("kind") == "train"]
last = [r["images_per_s"] for r in train if r["epoch"] == int(sys.argv[2])] or [r["images_per_s"] for r in train]
last.sort()
print(f"last epoch median {last[len(last) // 2]:.1f} images/s ({len(train)} steps)")
EOF
)
  add_row "ldexport train coco128 batch $train_batch, $epochs epochs, amp $amp" "${result:-see $out/train_$amp.log}"
done

[ $quick = 1 ] && run_tests

# 4. the loader alone (not in the quick check), 5. predict latency.
[ "${GPU_CHECK_QUICK:-0}" = 1 ] && [ "$mode" = gpu ] || {
step loader 40 "$PYTHON" scripts/bench_loader.py "${loader_args[@]}" --out "$out/loader.json"
result=$("$PYTHON" -c "import json,sys; print(', '.join(f\"{r['workers']} workers {r['steady_images_per_s']}\" for r in json.load(open(sys.argv[1]))['rows']) + ' images/s')" "$out/loader.json" 2>/dev/null)
add_row "loader alone (coco128, 1333x800 unless --cpu)" "${result:-see $out/loader.log}"
}
step predict "$limit_predict" "$PYTHON" scripts/bench_predict.py "${predict_args[@]}" --out "$out/predict.json"
result=$("$PYTHON" -c "import json,sys; print('; '.join(f\"batch {r['batch']} bias {r['cls_bias']}: forward {r['forward_ms']} ms, post {r['post_ms']} ms ({r['post_over_forward']:.0%})\" for r in json.load(open(sys.argv[1]))['rows']))" "$out/predict.json" 2>/dev/null)
add_row "predict latency" "${result:-see $out/predict.log}"

# 6. where one LD step's time goes: wall against GPU busy time (on --cpu: the operation counts).
#    On the GPU also the graph replay with the student channels-last (train.channels_last);
#    each step's log lists the kernels that take the most GPU time.
step_runs=(step_time)
[ "$mode" != cpu ] && step_runs+=(step_time_channels_last)
for name in "${step_runs[@]}"; do
  extra=(); [ "$name" = step_time_channels_last ] && extra=(--amp bf16 --mode graph --channels-last)
  step "$name" "$limit_step" "$PYTHON" scripts/bench_step_ops.py "${step_args[@]}" "${extra[@]}" --out "$out/$name.json"
  result=$("$PYTHON" -c "
import json, sys
r = json.load(open(sys.argv[1]))
print('; '.join(f\"{x['settings']['amp']} {x['settings']['mode']}: wall {x['wall_ms']} ms, GPU busy {x['gpu_busy_ms']} ms, {x['launches']} launches\" for x in r)
      if isinstance(r, list) else f\"{r['total']} top-level aten operations (CPU)\")" "$out/$name.json" 2>/dev/null)
  add_row "one LD step, batch 2 ${size}x${size}${extra:+, student channels-last}: where the time goes" "${result:-see $out/$name.log}"
done

# 7. train.compile against the same step not compiled (both replayed as CUDA graphs), bf16,
#    in one run: the measurement that decides compile's CUDA default; then both with the
#    student channels-last (torch 2.11's CUDA GroupNorm returns NCHW, which compiled code
#    avoids). Last, since compiling is the longest step (its first step took over 90 s on an
#    H200 without graphs). mmdet runs in both, so their ratios to it compare across them.
if [ "${GPU_CHECK_COMPILE:-$quick}" = 1 ] || [ "$mode" = dry ]; then
  compile_amp=bf16; [ "$mode" = cpu ] && compile_amp=fp32  # bf16 autocast crawls on a CPU
  bench "$compile_amp-compile" "$limit_compile" --compile --with-uncompiled --memory-iters 0
  bench "$compile_amp-compile-cl" "$limit_compile" --compile --student-channels-last --with-uncompiled --memory-iters 0
fi

[ "$mode" = dry ] && exit 0
gpu=$("$PYTHON" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')" 2>/dev/null)
echo
echo "ldexport gpu_check ($mode): $gpu, torch $("$PYTHON" -c 'import torch; print(torch.__version__)'), $(($(date +%s) - start_all)) s in all, logs in $out"
echo
echo "| step | status | time | result |"
echo "| --- | --- | ---: | --- |"
printf '%s\n' "${rows[@]}"
