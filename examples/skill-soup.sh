#!/usr/bin/env bash
# Compose two skills with the five loramix commands: train a math and a code LoRA on the bundled
# model, learn their layer-wise weights (CAT), merge them without data for comparison, and score
# everything on the held-out composite task (word problem -> program). `loramix demo` does the
# same in one command.
#
#   examples/skill-soup.sh [OUT]          # OUT defaults to ./skill-soup
#   ROWS=400 EVAL=40 examples/skill-soup.sh /tmp/soup    # smaller budgets (about a minute)
#   THREADS=1 examples/skill-soup.sh                      # on a machine other jobs keep busy
set -euo pipefail

out=${1:-skill-soup}
rows=${ROWS:-3000}    # training rows per skill
n=${EVAL:-200}        # eval items per task
threads=()            # torch threads: one per core unless THREADS says otherwise
if [[ -n "${THREADS:-}" ]]; then threads=(--threads "$THREADS"); fi
mkdir -p "$out"

# json FILE EXPR: one value from a JSON document (python's json module; no jq needed)
json() { python3 -c 'import json, sys; doc = json.load(open(sys.argv[1])); print(eval(sys.argv[2], {"doc": doc}))' "$1" "$2"; }

for skill in math code; do
  loramix train-skill "builtin:$skill" --limit "$rows" "${threads[@]}" -o "$out/$skill" --force > "$out/$skill.txt"
done
steps=$(json "$out/math/train_log.json" 'doc["steps"]')
echo "each skill LoRA took $steps steps" >&2

loramix fit-cat "$out/math" "$out/code" -d builtin:math -d builtin:code \
  --fraction 0.05 --init 0.5 --lr 0.1 "${threads[@]}" --force --json -o "$out/cat" > "$out/cat.json"
echo "CAT kept the α of step $(json "$out/cat.json" 'doc["chosen_step"]')" >&2

loramix merge "$out/math" "$out/code" -m linear -w 0.5,0.5 --force --json -o "$out/linear" > /dev/null
loramix merge "$out/math" "$out/code" -m ties --force --json -o "$out/ties" > /dev/null

adapters=()
for name in math code cat linear ties; do adapters+=(-a "$out/$name"); done
loramix eval -d builtin:math-code --limit "$n" -m program "${adapters[@]}" "${threads[@]}" --json > "$out/eval.json"

for i in 0 1 2 3 4 5; do
  json "$out/eval.json" "f'{doc[\"models\"][$i][\"name\"]:>8}  {100 * doc[\"models\"][$i][\"score\"]:5.1f}% on math-code'"
done
loramix inspect "$out/cat"
