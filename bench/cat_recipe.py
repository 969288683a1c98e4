"""CAT's α recipe over held-out seeds: init, free vs softmax, learning rate, steps and granularity
(layer, module, global, and one α per rank-1 component), each fitted by fit-cat on the math and code
LoRAs of seeds the main table (bench/compose.py, seeds 0-2) does not use, on the same 5% sample,
and scored on math-code and on each skill's own split.

Usage (from the repository root, in the project's virtualenv):

    python bench/cat_recipe.py                        # seeds 3 and 4, 4000 rows per LoRA, 200 eval items
    python bench/cat_recipe.py --seeds 3 --eval 50    # a quick look

The skill LoRAs are trained once per seed in --work and reused. Every finished variant is saved at
once to bench/results/cat_recipe.json (and the markdown beside it), and a rerun with the same
--work skips the variants the JSON already holds for its seed, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compose import (
    RESULTS,
    TASKS,
    commands,
    extra_folder,
    fit_variant,
    machine,
    meta,
    new_call,
    pct,
    quiet,
    save,
    spread,
)

# variant -> fit-cat options; the first is fit-cat's default (α per module, free, init 1/k, lr 0.1, 1 epoch)
VARIANTS = {
    "default": {},
    "init 1": {"init": 1.0},
    "softmax, lr 0.1": {"param": "softmax"},
    "softmax, lr 1": {"param": "softmax", "lr": 1.0},
    "lr 0.03": {"lr": 0.03},
    "lr 0.3": {"lr": 0.3},
    "3 epochs": {"epochs": 3},
    "5 epochs": {"epochs": 5},
    "per layer (the paper's)": {"granularity": "layer"},
    "global": {"granularity": "global"},
    "per rank slot": {"granularity": "rank"},
    "per rank slot, lr 0.3": {"granularity": "rank", "lr": 0.3},
    "per rank slot, 3 epochs": {"granularity": "rank", "epochs": 3},
    "per rank slot, 5 epochs": {"granularity": "rank", "epochs": 5},
}


def skill_loras(args, seed: int) -> list[Path]:
    from loramix.train.skill import TrainConfig, run_training

    folder = args.work / f"seed{seed}"
    for skill in ("math", "code"):
        if not (folder / skill / "adapter_config.json").is_file():
            config = TrainConfig(data=f"builtin:{skill}", out=folder / skill, limit=args.rows, seed=seed, force=True)
            run_training(config, quiet)
    return [folder / "math", folder / "code"]


def summary(runs: dict[str, dict[str, dict]]) -> list[dict]:
    """Per variant: mean and min-max over seeds of each task's accuracy, and the steps."""
    out = []
    for name in VARIANTS:
        done = [per_seed[name] for per_seed in runs.values() if name in per_seed]
        if done:
            row = {"variant": name, "steps": sorted({v["steps"] for v in done}), "seeds": len(done)}
            row |= {t: spread([v["scores"][t] for v in done]) for t in TASKS}
            out.append(row)
    return out


def markdown(doc: dict) -> str:
    m = doc["calls"][0]
    lines = [
        "# CAT recipe study",
        "",
        f"Machine: {doc['machine']}",
        "",
        f"Commands: {commands(doc)}. fit-cat on the math and code LoRAs of seeds {', '.join(doc['runs'])} (not seeds of the main "
        f"table), {m['rows']} training rows per LoRA, the same 5% sample for every variant, {m['eval']} eval "
        "items per task; accuracy in %, mean over the seeds (min–max). The default is fit-cat's: α per "
        "module, free, init 1/k (0.5 here), lr 0.1, 1 epoch; each other variant changes it in the one way its "
        "name says.",
        "",
        "| variant | steps | seeds | math-code | math | code |",
        "|---|---|---|---|---|---|",
    ]
    for r in doc["summary"]:
        steps = "/".join(str(s) for s in r["steps"])
        lines.append(f"| {r['variant']} | {steps} | {r['seeds']} | " + " | ".join(pct(r[t]) for t in TASKS) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="CAT's α recipe on held-out seeds (loramix-tiny, math and code).")
    p.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=[3, 4])
    p.add_argument("--rows", type=int, default=4000, help="training rows per skill LoRA")
    p.add_argument("--eval", type=int, default=200, help="eval items per task")
    p.add_argument("--work", type=Path, default=Path("/tmp/loramix-cat-recipe"), help="folder for the adapters")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--only", nargs="*", default=None, help="variant names to run [default: all]")
    args = p.parse_args(argv)
    from loramix.core import models

    models.quiet_libraries()
    path = args.results / "cat_recipe.json"
    doc = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    began = time.perf_counter()
    this = new_call(doc)
    for seed in args.seeds:
        adapters = skill_loras(args, seed)
        done = doc["runs"].setdefault(str(seed), {})
        for name, options in VARIANTS.items():
            if name in done or (args.only is not None and name not in args.only):
                continue
            out = extra_folder(args.work / f"seed{seed}", name)
            done[name] = fit_variant(args, name, adapters, ["math", "code"], out, seed, **options)
            doc |= {"machine": machine(), "summary": summary(doc["runs"])}
            doc["calls"][this] = meta(args, time.perf_counter() - began)
            save(args.results, "cat_recipe", doc, markdown)


if __name__ == "__main__":
    main()
