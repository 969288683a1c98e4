#!/usr/bin/env bash
# The GPU check: loramix's CUDA path and its speed, in one run of under 8 minutes on one GPU.
#
#   bash bench/gpu.sh [RESULTS]          # on a CUDA machine; RESULTS defaults to $OUT, else bench/results/gpu
#   bash bench/gpu.sh --smoke [RESULTS]  # the steps on the CPU at toy sizes (checks the script itself;
#                                        # without tests, demo and merge_speed, which CI runs elsewhere)
#
# Steps, each logged to RESULTS/<step>.log and timed in RESULTS/summary.md (a failed step is
# recorded and the others still run; the exit code is 1 if any failed):
#   tests        the suite's gpu tests (tests/test_gpu.py: bf16 and 4-bit training, fit-cat, eval)
#   demo         loramix demo --quick
#   base7b       a random Llama with 7B layer shapes (hidden 4096, intermediate 11008, 32 heads,
#                2 layers, the bundled tokenizer; nothing can be downloaded)
#   train4bit    train-skill math and code on it, 4-bit (nf4) base, on CUDA
#   fitcat4bit   fit-cat on the two, 4-bit base; eval7b scores the result
#   fit_cat_speed_7b / _tiny   bench/fit_cat_speed.py on CUDA (7B shapes, 4 layers; and --quick)
#   merge_speed  bench/merge_speed.py --quick (merging runs on the CPU)
#   eval_speed   bench/eval_speed.py on CUDA
set -uo pipefail

smoke=0
if [[ "${1:-}" == "--smoke" ]]; then smoke=1; shift; fi
results=${1:-${OUT:-bench/results/gpu}}
mkdir -p "$results"
results=$(cd "$results" && pwd)
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export HF_HUB_OFFLINE=1

if [[ $smoke == 1 ]]; then
  device=cpu; shape=(--hidden 64 --intermediate 128 --heads 4 --layers 2)
  steps=2; fit_steps=2; limit=8; speed=(--quick --repeats 1 --warmup 0); prompts=8
  espeed=(--batch-sizes 4,8 --max-new-tokens 8)
else
  if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "bench/gpu.sh: no CUDA device here (use --smoke to check the script on the CPU)" >&2
    exit 2
  fi
  device=cuda; shape=(--hidden 4096 --intermediate 11008 --heads 32 --layers 2)
  steps=30; fit_steps=20; limit=64; speed=(--hidden 4096 --intermediate 11008 --heads 32 --layers 4 --k 2,3); prompts=256
  espeed=()
fi

failed=0
{
  echo "# bench/gpu.sh ($([[ $smoke == 1 ]] && echo smoke, CPU || echo CUDA))"
  echo
  echo "Date: $(date -u '+%Y-%m-%d %H:%M') UTC; commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  python -c "import torch; print('- torch', torch.__version__, '; device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only')"
  echo
  echo "| step | exit | seconds |"
  echo "|---|---|---|"
} > "$results/summary.md"

step() {
  local name=$1; shift
  local began=$SECONDS
  "$@" > "$results/$name.log" 2>&1
  local rc=$?
  [[ $rc == 0 ]] || failed=1
  echo "| $name | $rc | $((SECONDS - began)) |" >> "$results/summary.md"
  echo "$name: exit $rc, $((SECONDS - began)) s" >&2
}

on() { python -m loramix "$@" --device "$device"; }

if [[ $smoke == 0 ]]; then
  step tests python -m pytest -q -m gpu tests/test_gpu.py
  step demo python -m loramix demo --quick -o "$work/demo" --json
fi
step base7b python bench/random_base.py "$work/base7b" "${shape[@]}"
for skill in math code; do
  step "train4bit_$skill" on train-skill "builtin:$skill" --base "$work/base7b" --load-in-4bit \
    --max-steps $steps --limit 256 --batch-size 8 -o "$work/$skill" --json
done
step fitcat4bit on fit-cat "$work/math" "$work/code" -d builtin:math -d builtin:code --base "$work/base7b" \
  --load-in-4bit --steps $fit_steps -o "$work/soup" --json
step eval7b on eval -d builtin:math --base "$work/base7b" --load-in-4bit --adapter "$work/soup" \
  --adapter "$work/math" --limit $limit --json
step fit_cat_speed_7b python bench/fit_cat_speed.py --device "$device" "${speed[@]}" --out "$results/fit_cat_speed.md"
[[ $smoke == 1 ]] || step fit_cat_speed_tiny python bench/fit_cat_speed.py --quick --device "$device" \
  --out "$results/fit_cat_speed_tiny.md"
[[ $smoke == 1 ]] || step merge_speed python bench/merge_speed.py --quick --out "$results/merge_speed.md"
step eval_speed python bench/eval_speed.py --device "$device" --prompts $prompts --repeats 1 "${espeed[@]}" \
  --out "$results/eval_speed.md"

cat "$results/summary.md"
exit $failed
