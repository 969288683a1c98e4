"""fit-cat --balance on the QA bot: does splitting CAT's sample evenly between the two skills let
cat and tuned-cat compose a manual's knowledge (builtin:manual, 8000 rows) with an answer format
(builtin:instruct, 4000 rows)? By default 5% of each set is 400 manual rows against 200 instruct
rows; --balance keeps the 600 and splits them 300:300.

Usage (from the repository root, in the project's virtualenv):

    python bench/balance.py                      # seeds 0, 1, 2, 200 eval items
    python bench/balance.py --seeds 0 --eval 50  # a quick look

Per seed: the two skill LoRAs (as in bench/compose_tasks.py, same seeds, so the same adapters), then
cat and tuned-cat with and without --balance, all scored on qa-bot, manual and instruct, with
qa-bot's answers split into "in instruct's format" and "right price". Each finished seed is saved to
bench/results/balance.{json,md}; a rerun skips the seeds the JSON already holds. `--mix` then adds,
to each seed already run, a data mix trained from scratch on the same balanced sample for as many
steps as the full data mix (the equal-data counterpart).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compose import RESULTS, commands, machine, meta, new_call, pct, save, say
from compose_tasks import EXPERIMENTS, FRACTION, PARTS, fit_all, score_models, slug, summarise, train

SPEC = EXPERIMENTS["qa-bot"]
FITS = {
    "cat": {},
    "cat --balance": {"balance": True},
    "tuned-cat": {"method": "tuned-cat"},
    "tuned-cat --balance": {"method": "tuned-cat", "balance": True},
}


def run_seed(args, seed: int) -> list[dict]:
    """The skill LoRAs (reused when trained), the four fits, every model scored."""
    folder = args.work / f"seed{seed}"
    sources = [f"builtin:{s}" for s in SPEC["skills"]]
    models: list[tuple[str, Path | None, int | None]] = [("base", None, None)]
    for skill in SPEC["skills"]:
        if (folder / skill / "train_log.json").is_file():
            steps = json.loads((folder / skill / "train_log.json").read_text()).get("steps")
        else:
            steps = train(args, f"builtin:{skill}", folder / skill, seed, limit=args.rows).steps
        models.append((skill, folder / skill, steps))
    models += fit_all(FITS, [folder / s for s in SPEC["skills"]], sources, folder, seed)
    return score_models(args, SPEC, folder, models)


MIX = "data mix, balanced 5% sample"
MIX_STEPS = 713  # as many as the full data mix's (one epoch of all 12000 rows; bench/results/compose_tasks.json)


def add_mix(args, run: dict) -> None:
    """The equal-data counterpart of --balance: a LoRA trained from scratch on exactly the balanced
    sample, for as many steps as the full data mix, scored like the rest and added to the run."""
    from loramix.core import data

    seed, folder = run["seed"], args.work / f"seed{run['seed']}"
    sources = [f"builtin:{s}" for s in SPEC["skills"]]
    rows = [r for _, part in data.sample(sources, FRACTION, seed, balance=True) for r in part]
    (folder / "data").mkdir(parents=True, exist_ok=True)
    data.dump(data.Dataset("balanced", rows), folder / "data/balanced.jsonl", force=True)
    log = train(args, str(folder / "data/balanced.jsonl"), folder / slug(MIX), seed, max_steps=MIX_STEPS)
    run["rows"] += score_models(args, SPEC, folder, [(MIX, folder / slug(MIX), log.steps)])


def summary(runs: list[dict]) -> list[dict]:
    """compose_tasks' summary over the models every seed has (the mix row may be missing in some)."""
    common = set.intersection(*({row["model"] for row in run["rows"]} for run in runs))
    return summarise(SPEC, [[row for row in run["rows"] if row["model"] in common] for run in runs])


def markdown(doc: dict) -> str:
    m = doc["calls"][0]
    head = ["qa-bot", *SPEC["skills"], *(f"kept {s}" for s in SPEC["skills"]), *PARTS]
    lines = [
        "# fit-cat --balance on the QA bot",
        "",
        f"Machine: {doc['machine']}",
        "",
        f"Commands: {commands(doc)}. "
        f"Seeds {', '.join(str(r['seed']) for r in doc['runs'])}; 5% of each skill's rows (400 manual, 200 "
        "instruct), or with --balance the same 600 rows split 300:300; the balanced data mix is a LoRA trained "
        f"from scratch on that balanced sample for {MIX_STEPS} steps, as many as the full data mix in "
        "bench/results/compose_tasks.md; accuracy in % (exact match), mean over "
        f"the seeds (min–max), {m['eval']} eval items per task. kept: a skill's own-split accuracy as a share "
        "of its LoRA's. The last two columns split qa-bot's answers: in instruct's sentence format (any "
        "numbers), and holding the manual's `count * price` (any format).",
        "",
        "| model | " + " | ".join(head) + " |",
        "|---|" + "---|" * len(head),
    ]
    lines += [f"| {r['model']} | " + " | ".join(pct(r.get(h)) for h in head) + " |" for r in doc["summary"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="fit-cat --balance on the QA bot (loramix-tiny).")
    p.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=[0, 1, 2])
    p.add_argument("--eval", type=int, default=200, help="eval items per task")
    p.add_argument("--work", type=Path, default=Path("/tmp/loramix-balance"), help="folder for the adapters")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--rows", type=int, default=None, help="training rows per skill [default: the skill's own]")
    p.add_argument("--mix", action="store_true", help=f"add '{MIX}' to the seeds already run")
    args = p.parse_args(argv)
    from loramix.core import models

    models.quiet_libraries()
    path = args.results / "balance.json"
    doc = json.loads(path.read_text()) if path.exists() else {"runs": []}
    began = time.perf_counter()
    this = new_call(doc)
    for seed in args.seeds:
        done = next((r for r in doc["runs"] if r["seed"] == seed), None)
        if done is None:
            doc["runs"].append({"seed": seed, "rows": run_seed(args, seed)})
        elif args.mix and all(row["model"] != MIX for row in done["rows"]):
            add_mix(args, done)
        else:
            continue
        doc |= {"machine": machine(), "summary": summary(doc["runs"])}
        doc["calls"][this] = meta(args, time.perf_counter() - began)
        save(args.results, "balance", doc, markdown)
        say(f"seed {seed} saved")


if __name__ == "__main__":
    main()
