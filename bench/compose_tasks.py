"""LoRA Soups' other two experiments on loramix-tiny: a QA bot (a manual's knowledge in an answer
format) and robustness to an unseen prompt format. Every composition method on the same adapters,
the same 5% sample and the same eval items, over several seeds.

Usage (from the repository root, in the project's virtualenv):

    python bench/compose_tasks.py --experiment qa-bot                 # 3 seeds, 200 eval items
    python bench/compose_tasks.py --experiment formats --seeds 0
    python bench/compose_tasks.py --experiment qa-bot --seeds 0 --eval 50 --rows 400   # a quick look
    python bench/compose_tasks.py --experiment qa-bot --rescore       # the composite again, with its parts

qa-bot: skill LoRAs on builtin:manual (prices from a fixed list, 8000 rows) and builtin:instruct (a
price given in the question, answered as a sentence, 4000 rows); the held-out composite builtin:qa-bot
asks for a manual price in the instruct format, with no price given. formats: LoRAs on math's
problems in three prompt formats (builtin:math, math-q, math-ask), scored on a fourth no LoRA was
trained on (builtin:math-io). Every task is scored by exact match.

Per seed: the skill LoRAs (each skill's default rows); the data mix on all their rows (one epoch)
and on CAT's 5% sample (as many steps as the full mix); linear (1/k each), ties and dare_ties
(weights 1); fit-cat's cat (default recipe and the paper's α per layer), tuned-cat, moe, lorahub and
arrow on the 5% sample. Results go to bench/results/compose_tasks.{md,json} (each experiment adds
its entry to the JSON and the markdown is rewritten from it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compose import ROOT, machine, meta, pct, quiet, save, say, spread

RESULTS = ROOT / "bench" / "results"
EXPERIMENTS = {
    "qa-bot": {"skills": ["manual", "instruct"], "composite": "qa-bot"},
    "formats": {"skills": ["math", "math-q", "math-ask"], "composite": "math-io"},
}
FRACTION = 0.05
# table name -> fit-cat options
FITS = {
    "CAT (α per module, default)": {},
    "CAT (α per layer, paper)": {"granularity": "layer"},
    "tuned-cat": {"method": "tuned-cat"},
    "moe (routed)": {"method": "moe"},
    "lorahub": {"method": "lorahub"},
    "arrow (routed)": {"method": "arrow"},
}
# table name -> (merge method, weight per adapter: None for 1/k)
MERGES = {"linear 1/k": ("linear", None), "ties": ("ties", 1.0), "dare_ties": ("dare_ties", 1.0)}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").replace("--", "-")


def train(args, data: str, out: Path, seed: int, limit: int | None = None, max_steps: int | None = None):
    from loramix.train.skill import TrainConfig, run_training

    config = TrainConfig(data=data, out=out, seed=seed, limit=limit, max_steps=max_steps, force=True)
    return run_training(config, quiet)


def run_seed(args, spec: dict, seed: int) -> list[dict]:
    """Every model of one seed, scored: [{"model", "folder", task: accuracy, ..., "steps"}]."""
    from loramix.core import data
    from loramix.merge.job import MergeRequest, run_merge

    skills, folder = spec["skills"], args.work / args.experiment / f"seed{seed}"
    sources = [f"builtin:{s}" for s in skills]
    models: list[tuple[str, Path | None, int | None]] = [("base", None, None)]
    began = time.perf_counter()
    for skill in skills:
        log = train(args, f"builtin:{skill}", folder / skill, seed, limit=args.rows)
        models.append((skill, folder / skill, log.steps))
    (folder / "data").mkdir(parents=True, exist_ok=True)
    parts = [data.load(source, args.rows).rows for source in sources]
    data.dump(data.Dataset("mix", [r for part in parts for r in part]), folder / "data/mix.jsonl", force=True)
    mix = train(args, str(folder / "data/mix.jsonl"), folder / "mix", seed)
    models.append(("data mix, all rows", folder / "mix", mix.steps))
    sample = [r for _, part in data.sample(sources, FRACTION, seed) for r in part]
    data.dump(data.Dataset("sample", sample), folder / "data/sample.jsonl", force=True)
    equal = train(args, str(folder / "data/sample.jsonl"), folder / "mix-sample", seed, max_steps=mix.steps)
    models.append(("data mix, CAT's 5% sample", folder / "mix-sample", equal.steps))
    adapters = [folder / s for s in skills]
    for name, (method, weight) in MERGES.items():
        weights = [weight if weight is not None else 1 / len(skills)] * len(skills)
        run_merge(
            MergeRequest(
                adapters=adapters, method=method, out=folder / slug(name), weights=weights, seed=seed, force=True
            )
        )
        models.append((name, folder / slug(name), None))
    models += fit_all(FITS, adapters, sources, folder, seed)
    say(f"seed {seed}: trained and fitted in {time.perf_counter() - began:.0f} s")
    return score_models(args, spec, folder, models)


def fit_all(fits: dict, adapters: list[Path], sources: list[str], folder: Path, seed: int) -> list[tuple]:
    """Each fit-cat variant (name -> options) on the same adapters and 5% sample: [(name, folder, steps)]."""
    from loramix.soup import fit, job

    out = []
    for name, options in fits.items():
        config = fit.CatConfig(
            adapters=adapters,
            data=sources,
            out=folder / slug(name),
            force=True,
            seed=seed,
            fraction=FRACTION,
            **options,
        )
        out.append((name, folder / slug(name), job.run_fit(config, quiet).steps))
    return out


def score_models(args, spec: dict, folder: Path, models: list, old: list[dict] | None = None) -> list[dict]:
    """Every model (name, folder or None for the base, steps) scored on the composite and on each
    skill's eval split (or, given the `old` rows of a run, on the composite only, the rest kept);
    on qa-bot, also the share of composite answers in instruct's format and the share naming the
    manual's price (whatever the format)."""
    composite = spec["composite"]
    predictions = folder / f"predictions-{composite}.jsonl"
    adapters = [f for _, f, _ in models if f]
    scores = {composite: score(args, adapters, composite, predictions)}
    if old is None:
        scores |= {task: score(args, adapters, task) for task in spec["skills"]}
    parts = composite_parts(predictions) if composite == "qa-bot" else {}
    rows = []
    for i, (name, path, steps) in enumerate(models):
        key = str(path) if path else "base"
        row = {"model": name, "folder": str(path) if path else None, "steps": steps}
        row |= {t: old[i][t] for t in spec["skills"]} if old else {}
        row |= {t: s[key] for t, s in scores.items()}
        row |= parts.get(path.name if path else "base", {})
        rows.append(row)
    say(f"{folder.name}: " + ", ".join(f"{r['model']} {100 * r[composite]:.1f}" for r in rows))
    return rows


def rescore(args, spec: dict, entry: dict) -> list[dict]:
    """The composite scored again on the adapters of an earlier run (its folders), with its parts."""
    runs = []
    for run in entry["runs"]:
        models = [(r["model"], Path(r["folder"]) if r["folder"] else None, r["steps"]) for r in run["rows"]]
        folder = next(m[1] for m in models if m[1]).parent
        runs.append({"seed": run["seed"], "rows": score_models(args, spec, folder, models, run["rows"])})
    return runs


PARTS = ("in instruct's format", "right price")
PARTS_TEXT = (
    " The last two columns split the composite: the share of its answers in instruct's sentence format"
    " (whatever the numbers) and the share holding the manual's `count * price` (whatever the format)."
)
SENTENCE = re.compile(r" ?\d+ [a-z]+ are \d+ \* \d+ coins\.")


def composite_parts(predictions: Path) -> dict[str, dict[str, float]]:
    """{model: {"in instruct's format": share, "right price": share}} from qa-bot's predictions:
    the format is instruct's answer sentence (any numbers), the price is right when the expected
    "count * price" appears in the output (in any format)."""
    counts: dict[str, list[tuple[bool, bool]]] = {}
    for line in predictions.read_text().splitlines():
        p = json.loads(line)
        arithmetic = re.search(r"\d+ \* \d+", p["expected"]).group()  # type: ignore[union-attr]
        has = (bool(SENTENCE.fullmatch(p["output"].rstrip())), arithmetic in p["output"])
        counts.setdefault(p["model"], []).append(has)
    return {
        m: {"in instruct's format": sum(f for f, _ in v) / len(v), "right price": sum(k for _, k in v) / len(v)}
        for m, v in counts.items()
    }


def score(args, adapters: list[Path], task: str, predictions: Path | None = None) -> dict[str, float]:
    """Accuracy (exact match) of the base and each adapter on the first `--eval` items of task's
    eval split: {"base" or adapter folder: accuracy}."""
    from loramix.evaluate.job import EvalConfig, run_eval

    config = EvalConfig(
        data=f"builtin:{task}",
        adapters=adapters,
        metric="exact",
        limit=args.eval,
        max_new_tokens=24,
        batch_size=64,
        predictions=predictions,
        force=True,
    )
    report = run_eval(config, quiet)
    return {("base" if m.adapter is None else str(m.adapter)): m.score for m in report.models}


def summarise(spec: dict, runs: list[list[dict]]) -> list[dict]:
    """Mean and min–max over seeds of each model's accuracy per task, and its retention of each
    skill (own-split accuracy as a share of that skill's LoRA's)."""
    tasks = [spec["composite"], *spec["skills"]]
    out = []
    for i, row in enumerate(runs[0]):
        rows = [run[i] for run in runs]
        entry = {"model": row["model"], **{t: spread([r[t] for r in rows]) for t in tasks}}
        entry |= {part: spread([r[part] for r in rows]) for part in PARTS if part in row}
        for skill in spec["skills"]:
            own = [next(x for x in run if x["model"] == skill)[skill] for run in runs]
            entry[f"kept {skill}"] = spread([r[skill] / o for r, o in zip(rows, own) if o])
        out.append(entry)
    return out


def verdict(spec: dict, summary: list[dict]) -> str:
    comp = spec["composite"]
    mix = next(r for r in summary if r["model"] == "data mix, all rows")[comp]
    best = max(
        (
            r
            for r in summary[1:]
            if r["model"] not in (*spec["skills"], "data mix, all rows", "data mix, CAT's 5% sample")
        ),
        key=lambda r: r[comp]["mean"],
    )
    if best[comp]["mean"] <= mix["mean"]:
        where = "below it"
    elif mix["n"] == 1:
        where = "above it (one seed)"
    elif best[comp]["min"] > mix["max"]:
        where = "above it, the ranges over seeds not overlapping"
    else:
        where = "above it in the mean, the ranges over seeds overlapping"
    return (
        f"Best composition method on {comp} (beside the skill LoRAs and the data mixes): {best['model']} "
        f"({pct(best[comp])}), against the data mix on all the rows ({pct(mix)}): {where}."
    )


def markdown(doc: dict) -> str:
    lines = ["# compose_tasks results", "", f"Machine: {doc['machine']}", ""]
    for name, entry in doc.items():
        if name not in EXPERIMENTS:
            continue
        spec, m = EXPERIMENTS[name], entry["meta"]
        tasks = [spec["composite"], *spec["skills"]]
        head = tasks + [f"kept {s}" for s in spec["skills"]]
        head += [part for part in PARTS if part in entry["summary"][0]]
        lines += [
            f"## {name}",
            "",
            f"Command: `{m['command']}` ({m['date']}, commit {m['commit']}, {m['seconds']:.0f} s). Accuracy in % "
            f"(exact match), mean over seeds {m['seeds']} (min–max), {m['eval']} eval items per task; kept: a "
            "skill's own-split accuracy as a share of its LoRA's. Steps: optimizer steps of seed "
            f"{m['seeds'][0]} (training or fitting)."
            + (
                f" The composite was scored again by `{m['rescored']['command']}` ({m['rescored']['date']})."
                if "rescored" in m
                else ""
            )
            + (PARTS_TEXT if "right price" in entry["summary"][0] else ""),
            "",
            "| model | steps | " + " | ".join(head) + " |",
            "|---|---|" + "---|" * len(head),
        ]
        for r, first in zip(entry["summary"], entry["runs"][0]["rows"]):
            steps = first["steps"] if first["steps"] is not None else "-"
            lines.append(f"| {r['model']} | {steps} | " + " | ".join(pct(r[h]) for h in head) + " |")
        lines += ["", verdict(spec, entry["summary"]), ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="LoRA Soups' QA-bot and prompt-format experiments on loramix-tiny.")
    p.add_argument("--experiment", choices=list(EXPERIMENTS), default="qa-bot")
    p.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=[0, 1, 2])
    p.add_argument("--rows", type=int, default=None, help="training rows per skill [default: the skill's own]")
    p.add_argument("--eval", type=int, default=200, help="eval items per task")
    p.add_argument("--work", type=Path, default=Path("/tmp/loramix-compose"), help="folder for the adapters")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--rescore", action="store_true", help="score the composite again on the recorded run's adapters")
    args = p.parse_args(argv)
    from loramix.core import models

    models.quiet_libraries()
    spec, began = EXPERIMENTS[args.experiment], time.perf_counter()
    path = args.results / "compose_tasks.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    if args.rescore:
        entry = doc[args.experiment]
        entry["runs"] = rescore(args, spec, entry)
        entry["meta"]["rescored"] = meta(args, time.perf_counter() - began)
    else:
        runs = [{"seed": seed, "rows": run_seed(args, spec, seed)} for seed in args.seeds]
        entry = {"runs": runs, "meta": meta(args, time.perf_counter() - began)}
    entry["summary"] = summarise(spec, [r["rows"] for r in entry["runs"]])
    doc["machine"] = machine()
    doc[args.experiment] = entry
    save(args.results, "compose_tasks", doc, markdown)


if __name__ == "__main__":
    main()
