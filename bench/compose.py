"""The skill-composition benchmark: `loramix demo`'s experiment at full budget over several seeds,
and the studies LoRA Soups leaves open, on loramix-tiny and the built-in skills.

Usage (from the repository root, in the project's virtualenv):

    python bench/compose.py                          # the main table: 3 seeds, 4000 rows per skill
    python bench/compose.py --seeds 0 --rows 1000 --eval 100      # a quick look
    python bench/compose.py --study granularity      # CAT per layer, module or global (OQ 4)
    python bench/compose.py --study fraction         # CAT on 1, 2.5, 5, 10, 20% of each skill (OQ 3)
    python bench/compose.py --study k                # 2, 3, 4 skills: math, code, units, words (OQ 1)
    python bench/compose.py --study rank             # skill LoRAs of rank 8, 16, 32, 64 (OQ 2)

Main: for each seed, the demo's pipeline (math and code LoRAs; data-mix LoRAs on all the rows and on
CAT's 5% sample, each with as many steps as one skill LoRA; CAT with fit-cat's defaults; tuned-cat;
linear, cat 1/1, ties, dare_ties), then the other fit-cat methods on the same adapters and sample
(CAT with the paper's α per layer, moe, lorahub, arrow), all scored on `--eval` items of math-code
(programs run in the sandbox) and of each skill's own eval split; mean and min–max over seeds.
Studies reuse the main run's seed-0 adapters where they can and score fit-cat variants the same
way. Results go to bench/results/compose.md and compose.json (each run adds its study to the JSON
and rewrites the markdown from it).

    python bench/compose.py --study recipe --seeds 3  # fit-cat recipes on a seed the main table does not use
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
TASKS = ("math-code", "math", "code")


def quiet(*_):
    """A progress reporter that reports nothing (any of the job functions' progress signatures)."""
    from contextlib import nullcontext

    return nullcontext(lambda *x: None)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# the other fit-cat methods the main table adds to the demo's models: name -> options
EXTRA = {
    "CAT, α per layer (paper)": {"granularity": "layer"},
    "moe (routed)": {"method": "moe"},
    "lorahub": {"method": "lorahub"},
    "arrow (routed)": {"method": "arrow"},
}


def main_study(args) -> dict:
    from loramix.demo.plan import DemoConfig
    from loramix.demo.run import run_demo

    runs = []
    for seed in args.seeds:
        config = DemoConfig(out=args.work / f"seed{seed}", seed=seed, force=True, rows=args.rows, eval_items=args.eval)
        doc = run_demo(config, quiet, quiet)
        own = {skill: next(r[skill] for r in doc["rows"] if r["model"] == skill) for skill in ("math", "code")}
        for name, options in EXTRA.items():
            adapters = [config.out / s for s in ("math", "code")]
            v = fit_variant(args, name, adapters, ["math", "code"], extra_folder(config.out, name), seed, **options)
            row = {"model": name, "folder": v["folder"], **{t: v["scores"][t] for t in TASKS}}
            row["retention"] = {s: (row[s] / own[s] if own[s] else None) for s in own}
            doc["rows"].append(row)
        runs.append(
            {
                "seed": seed,
                "rows": doc["rows"],
                "super_linear": doc["super_linear"],
                "cat_gain": doc["cat_gain"],
                "tuned_gain": doc["tuned_gain"],
                "single_gains": doc["single_gains"],
                "seconds": doc["total_seconds"],
            }
        )
        say(f"seed {seed}: {[(r['model'], round(100 * r['math-code'], 1)) for r in doc['rows']]}")
    return {"runs": runs, "summary": summarise([r["rows"] for r in runs])}


def summarise(per_seed: list[list[dict]]) -> list[dict]:
    """Mean, min and max over seeds of each model's accuracy per task and retention per skill."""
    out = []
    for i, row in enumerate(per_seed[0]):
        rows = [seed_rows[i] for seed_rows in per_seed]
        entry = {"model": row["model"]}
        for task in TASKS:
            entry[task] = spread([r[task] for r in rows])
        for skill in ("math", "code"):
            entry[f"kept {skill}"] = spread([r["retention"][skill] for r in rows if r["retention"][skill] is not None])
        out.append(entry)
    return out


def winner_line(summary: list[dict]) -> str:
    """Which model is best on math-code (mean over seeds), and whether its range over seeds clears
    the full data mix's."""
    best = max(summary, key=lambda r: r["math-code"]["mean"])
    mix = next(r for r in summary if r["model"] == "data mix")
    clear = best["math-code"]["min"] > mix["math-code"]["max"]
    if best["model"] == "data mix":
        return f"Best on math-code: the data mix on all the rows ({pct(best['math-code'])})."
    return (
        f"Best on math-code: {best['model']} ({pct(best['math-code'])}), against the data mix on all the rows "
        f"{pct(mix['math-code'])}: its range over seeds {'does not overlap' if clear else 'overlaps'} the mix's."
    )


def spread(values: list[float]) -> dict:
    return (
        {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "n": len(values)} if values else {}
    )


def fit_variant(args, name: str, adapters: list[Path], skills: list[str], out: Path, seed: int = 0, **options) -> dict:
    """Fit one fit-cat variant of the skill LoRAs `adapters` (one per skill) on 5% of the skills'
    data and score it on math-code and on each skill's own split."""
    from loramix.soup import fit, job

    config = fit.CatConfig(
        adapters=adapters,
        data=[f"builtin:{s}" for s in skills],
        out=out,
        force=True,
        seed=seed,
        **({"fraction": 0.05} | options),
    )
    began = time.perf_counter()
    fitted = job.run_fit(config, quiet)
    seconds = round(time.perf_counter() - began, 1)
    scores = {"math-code": score_one(args, out, "math-code", "program")}
    scores |= {s: score_one(args, out, s, "exact") for s in skills}
    say(f"{name} (seed {seed}): {scores}")
    return {
        "variant": name,
        "folder": str(out),
        "options": dict(options),
        "scores": scores,
        "steps": fitted.steps,
        "seconds": seconds,
    }


def extra_folder(folder: Path, name: str) -> Path:
    return folder / "extra" / name.replace(" ", "-").replace(",", "").replace("(", "").replace(")", "")


def cat_variant(args, name: str, adapters: list[Path], **options) -> dict:
    """A variant of the earlier studies: CAT α per layer (their recipe) on math and code LoRAs."""
    out = args.work / "study" / name
    return fit_variant(args, name, adapters, ["math", "code"], out, seed=0, **({"granularity": "layer"} | options))


def seed0(args) -> Path:
    folder = args.work / "seed0"
    if not (folder / "math").is_dir():
        raise SystemExit(f"{folder}: run the main study first (its seed-0 adapters are reused)")
    return folder


def granularity_study(args) -> list[dict]:
    base = seed0(args)
    adapters = [base / "math", base / "code"]
    return [cat_variant(args, f"granularity-{g}", adapters, granularity=g) for g in ("global", "layer", "module")]


def fraction_study(args) -> list[dict]:
    base = seed0(args)
    adapters = [base / "math", base / "code"]
    return [cat_variant(args, f"fraction-{f}", adapters, fraction=f) for f in (0.01, 0.025, 0.05, 0.1, 0.2)]


K_METHODS = {"CAT": {}, "tuned CAT": {"method": "tuned-cat"}, "moe (routed)": {"method": "moe"}}


def k_study(args) -> dict:
    """k = 2, 3, 4 skills (math, code, units, words) composed by CAT, tuned-cat and moe on seed 0:
    math-code and each skill's retention (its own split's accuracy as a share of its LoRA's)."""
    from loramix.demo.plan import DemoConfig
    from loramix.demo.run import train_skill

    base = seed0(args)
    skills = ["math", "code", "units", "words"]
    for skill in skills[2:]:
        if not (base / skill).is_dir():
            rows = 8000 if skill == "words" else args.rows  # words needs twice the rows (bench/results/skills.md)
            train_skill(DemoConfig(out=base, rows=rows), f"builtin:{skill}", base / skill, quiet)
    own = {s: score_one(args, base / s, s, "exact") for s in skills}
    variants = []
    for k in (2, 3, 4):
        for name, options in K_METHODS.items():
            label = f"k{k} {name}"
            v = fit_variant(
                args, label, [base / s for s in skills[:k]], skills[:k], extra_folder(base, label), **options
            )
            v.update(k=k, method=name, retention={s: v["scores"][s] / own[s] for s in skills[:k] if own[s]})
            variants.append(v)
    return {"own": own, "variants": variants}


def score_one(args, folder: Path, task: str, metric: str) -> float:
    from loramix.evaluate.job import EvalConfig, run_eval

    config = EvalConfig(
        data=f"builtin:{task}",
        adapters=[folder],
        with_base=False,
        metric=metric,
        limit=args.eval,
        max_new_tokens=24,
        batch_size=64,
    )
    return run_eval(config, quiet).models[0].score


RECIPES = {
    "CAT α per layer, init 0.5 (the earlier demo's)": {"granularity": "layer"},
    "CAT α per layer, init 1 (the earlier default)": {"granularity": "layer", "init": 1.0},
    "CAT α per module (default)": {},
    "tuned-cat, 3 tuning epochs": {"method": "tuned-cat", "tune_epochs": 3},
    "tuned-cat, 10 tuning epochs (default)": {"method": "tuned-cat"},
    "moe lr 1e-3, 1 epoch": {"method": "moe", "epochs": 1},
    "moe lr 1e-3, 5 epochs (default)": {"method": "moe"},
}


def recipe_study(args) -> dict:
    """fit-cat's recipes on the math and code LoRAs of a seed the main table does not use (3 by
    default), and the equal-data mix trained for 1 and for 10 epochs on the same sample."""
    from loramix.core import data
    from loramix.train.skill import TrainConfig, run_training

    seed = args.seeds[0]
    folder = args.work / f"recipe-seed{seed}"
    for skill in ("math", "code"):
        if not (folder / skill).is_dir():
            run_training(TrainConfig(data=f"builtin:{skill}", out=folder / skill, limit=args.rows, seed=seed), quiet)
    adapters = [folder / "math", folder / "code"]
    variants = [
        fit_variant(args, name, adapters, ["math", "code"], extra_folder(folder, name), seed, **options)
        for name, options in RECIPES.items()
    ]
    sample = folder / "sample.jsonl"
    rows = [r for _, part in data.sample(["builtin:math", "builtin:code"], 0.05, seed) for r in part]
    data.dump(data.Dataset("sample", rows), sample, force=True)
    for epochs in (1, 10):
        out = folder / f"mix-sample-{epochs}"
        began = time.perf_counter()
        log = run_training(TrainConfig(data=str(sample), out=out, seed=seed, epochs=epochs, force=True), quiet)
        scores = {t: score_one(args, out, t, "program" if t == "math-code" else "exact") for t in TASKS}
        name = f"data mix on the 5% sample, {epochs} epoch{'s' if epochs > 1 else ''}"
        say(f"{name}: {scores}")
        variants.append(
            {"variant": name, "scores": scores, "steps": log.steps, "seconds": round(time.perf_counter() - began, 1)}
        )
    return {"seed": seed, "variants": variants}


def rank_study(args) -> list[dict]:
    from loramix.train.skill import TrainConfig, run_training

    out = []
    for rank in (8, 16, 32, 64):
        folder = args.work / "study" / f"rank{rank}"
        for skill in ("math", "code"):
            if not (folder / skill).is_dir():
                run_training(
                    TrainConfig(
                        data=f"builtin:{skill}", out=folder / skill, rank=rank, alpha=2 * rank, limit=args.rows, seed=0
                    ),
                    quiet,
                )
        out.append(cat_variant(args, f"rank-{rank}", [folder / "math", folder / "code"]))
    return out


STUDIES = {
    "main": main_study,
    "recipe": recipe_study,
    "granularity": granularity_study,
    "fraction": fraction_study,
    "k": k_study,
    "rank": rank_study,
}


def pct(x: dict | float | None) -> str:
    if isinstance(x, dict):
        if not x:
            return "-"
        if x["n"] == 1:
            return f"{100 * x['mean']:.1f}"
        return f"{100 * x['mean']:.1f} ({100 * x['min']:.1f}–{100 * x['max']:.1f})"
    return "-" if x is None else f"{100 * x:.1f}"


def markdown(doc: dict) -> str:
    lines = ["# compose results", "", f"Machine: {doc['machine']}", ""]
    main = doc.get("main")
    if main:
        m = main["meta"]
        lines += [
            "## Main table",
            "",
            f"Command: `{m['command']}` ({m['date']}, commit {m['commit']}, "
            f"{m['seconds']:.0f} s). Accuracy in %, mean over seeds {m['seeds']} (min–max); "
            f"{m['rows']} training rows per skill, {m['eval']} eval items per task.",
            "",
            "| model | math-code | math | code | kept math | kept code |",
            "|---|---|---|---|---|---|",
        ]
        for r in main["summary"]:
            lines.append(
                f"| {r['model']} | {pct(r['math-code'])} | {pct(r['math'])} | {pct(r['code'])} | "
                f"{pct(r['kept math'])} | {pct(r['kept code'])} |"
            )
        sl = [r["super_linear"] for r in main["runs"]]
        lines += ["", winner_line(main["summary"])]
        lines += [
            "",
            f"CAT super-linear on math-code (gain over the base above the single skills' gains together): "
            f"{sum(sl)} of {len(sl)} seeds; CAT's gains: "
            + ", ".join(f"{100 * r['cat_gain']:+.1f}" for r in main["runs"])
            + " points.",
            "",
        ]
    recipe = doc.get("recipe")
    if recipe:
        m = recipe["meta"]
        lines += [
            "## Study: recipe",
            "",
            f"Command: `{m['command']}` ({m['date']}, commit {m['commit']}); fit-cat's recipes on the math and "
            f"code LoRAs of seed {recipe['seed']} (not a seed of the main table), {m['eval']} eval items per task, "
            "accuracy in %. The defaults were chosen from this table.",
            "",
            "| variant | steps | math-code | math | code |",
            "|---|---|---|---|---|",
        ]
        for v in recipe["variants"]:
            sc = v["scores"]
            lines.append(f"| {v['variant']} | {v['steps']} | " + " | ".join(pct(sc.get(t)) for t in TASKS) + " |")
        lines.append("")
    k = doc.get("k")
    if k and "own" in k:
        m = k["meta"]
        own = ", ".join(f"{s} {pct(v)}" for s, v in k["own"].items())
        lines += [
            "## Study: k skills",
            "",
            f"Command: `{m['command']}` ({m['date']}, commit {m['commit']}); the seed-0 LoRAs of math, code, units "
            f"and words, the first k composed, {m['eval']} eval items per task; kept: the skill's own-split accuracy "
            f"as a share of its LoRA's ({own}).",
            "",
            "| k | method | math-code | kept math | kept code | kept units | kept words |",
            "|---|---|---|---|---|---|---|",
        ]
        for v in k["variants"]:
            kept = v["retention"]
            lines.append(
                f"| {v['k']} | {v['method']} | {pct(v['scores']['math-code'])} | "
                + " | ".join(pct(kept.get(s)) for s in ("math", "code", "units", "words"))
                + " |"
            )
        lines.append("")
    for name in ("granularity", "fraction", "k", "rank"):
        study = doc.get(name)
        if not study or (name == "k" and "own" in study):
            continue
        m = study["meta"]
        lines += [
            f"## Study: {name}",
            "",
            f"Command: `{m['command']}` ({m['date']}, commit {m['commit']}); "
            f"CAT on the seed-0 skill LoRAs, {m['eval']} eval items per task, accuracy in %.",
            "",
            "| variant | steps | math-code | math | code | units | words |",
            "|---|---|---|---|---|---|---|",
        ]
        for v in study["variants"]:
            sc = v["scores"]
            lines.append(
                f"| {v['variant']} | {v['steps']} | "
                + " | ".join(pct(sc.get(t)) for t in ("math-code", "math", "code", "units", "words"))
                + " |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def meta(args, seconds: float) -> dict:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    return {
        "command": f"python bench/{Path(sys.argv[0]).name}" + "".join(" " + shlex.quote(a) for a in sys.argv[1:]),
        "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "commit": commit,
        "seeds": args.seeds,
        "rows": args.rows,
        "eval": args.eval,
        "seconds": round(seconds, 1),
    }


def new_call(doc: dict) -> int:
    """A slot in doc["calls"] for this run's meta (a benchmark that adds to its results over several
    calls keeps every call's command); returns its index."""
    doc.setdefault("calls", []).append(None)
    return len(doc["calls"]) - 1


def commands(doc: dict) -> str:
    """doc["calls"] as one line: each command with its date, commit and seconds."""
    return "; ".join(
        f"`{c['command']}` ({c['date']}, commit {c['commit']}, {c['seconds']:.0f} s)" for c in doc["calls"] if c
    )


def machine() -> str:
    import os
    import platform
    from importlib.metadata import version

    return (
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), python "
        f"{platform.python_version()}, torch {version('torch')}, transformers {version('transformers')}, "
        f"peft {version('peft')}"
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="LoRA Soups' skill-composition experiment on loramix-tiny.")
    p.add_argument("--study", choices=list(STUDIES), default="main")
    p.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=[0, 1, 2])
    p.add_argument("--rows", type=int, default=4000, help="training rows per skill LoRA")
    p.add_argument("--eval", type=int, default=500, help="eval items per task")
    p.add_argument("--work", type=Path, default=Path("/tmp/loramix-compose"), help="folder for the adapters")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    from loramix.core import models

    models.quiet_libraries()
    began = time.perf_counter()
    result = STUDIES[args.study](args)
    path = args.results / "compose.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc["machine"] = machine()
    entry = result if isinstance(result, dict) else {"variants": result}
    doc[args.study] = {**entry, "meta": meta(args, time.perf_counter() - began)}
    save(args.results, "compose", doc, markdown)


def save(results: Path, stem: str, doc: dict, render) -> None:
    """Write results/STEM.json and the markdown `render` makes of it (also printed)."""
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
    text = render(doc)
    (results / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
