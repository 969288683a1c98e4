"""Built-in skills on loramix-tiny: train one LoRA per skill with `train-skill`'s defaults, then
score the base and every skill LoRA (exact match of the greedy completion) on each skill's eval
split and on the held-out composite builtin:math-code.

    python bench/skills.py                       # all skills, 500 eval items each, ~6 min on 2 cores
    python bench/skills.py --skills math,code --eval-limit 100

Writes bench/results/skills.md and skills.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
COMPOSITE = "math-code"


def train_all(skills: list[str], folder: Path, threads: int | None, seed: int) -> dict:
    from contextlib import nullcontext

    from loramix.train.skill import TrainConfig, run_training

    logs = {}
    for skill in skills:
        began = time.time()
        config = TrainConfig(data=f"builtin:{skill}", out=folder / skill, threads=threads, seed=seed)
        log = run_training(config, lambda total: nullcontext(lambda *_: None))
        logs[skill] = {
            "wall_seconds": round(time.time() - began, 1),
            "train_seconds": log.history.seconds,
            "steps": log.steps,
            "final_loss": log.final_loss,
            "val_loss": log.history.val[-1]["loss"] if log.history.val else None,
        }
        print(f"trained {skill}: {logs[skill]}", file=sys.stderr, flush=True)
    return logs


def score_all(skills: list[str], folder: Path, eval_limit: int) -> dict:
    from peft import PeftModel

    from loramix.core import data, models
    from loramix.evaluate import generation, metrics

    path = models.resolve_base(models.BUNDLED)
    tokenizer = models.load_tokenizer(path)
    base = models.load_model(path, models.pick_dtype("auto", "cpu"), "cpu").eval()
    tasks = list(dict.fromkeys(skills + [COMPOSITE]))
    sets = {t: data.load(f"builtin:{t}:eval", eval_limit).rows for t in tasks}

    def score(model) -> dict:
        out = {}
        for task, rows in sets.items():
            prompts = generation.prompt_ids(rows, tokenizer)
            outputs = generation.generate(model, tokenizer, prompts, max_new_tokens=24, batch_size=64, stops=("\n",))
            hits = sum(metrics.exact(o.text, r["completion"]) for o, r in zip(outputs, rows))
            out[task] = round(hits / len(rows), 4)
        return out

    scores = {"base": score(base)}
    for skill in skills:
        model = PeftModel.from_pretrained(base, folder / skill).eval()
        scores[skill] = score(model)
        base = model.unload()
        print(f"scored {skill}: {scores[skill]}", file=sys.stderr, flush=True)
    return scores


def table(skills: list[str], logs: dict, scores: dict) -> str:
    head = "| model | train time (s) | own eval split | " + " | ".join(f"`{t}`" for t in scores["base"]) + " |"
    lines = [head, "|" + " --- |" * (3 + len(scores["base"]))]
    for name in ["base"] + skills:
        own = "-" if name == "base" else f"{100 * scores[name][name]:.1f}%"
        secs = "-" if name == "base" else f"{logs[name]['train_seconds']:.0f}"
        cells = " | ".join(f"{100 * v:.1f}%" for v in scores[name].values())
        lines.append(f"| {'base (loramix-tiny)' if name == 'base' else name + ' LoRA'} | {secs} | {own} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skills", default="math,code,units,words")
    p.add_argument("--eval-limit", type=int, default=500)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    skills = a.skills.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        logs = train_all(skills, Path(tmp), a.threads, a.seed)
        scores = score_all(skills, Path(tmp), a.eval_limit)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    md = table(skills, logs, scores)
    header = (
        f"Built-in skills on loramix-tiny (train-skill defaults, seed {a.seed}, {a.eval_limit} eval items per "
        f"task, exact match), commit {commit}, {platform.machine()} with {len(__import__('os').sched_getaffinity(0))} cores.\n"
        f"Command: `python bench/skills.py {' '.join(sys.argv[1:])}`\n\n"
    )
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "skills.md").write_text(header + md + "\n")
    (a.out / "skills.json").write_text(
        json.dumps({"commit": commit, "train": logs, "exact_match": scores}, indent=1) + "\n"
    )
    print(header + md)


if __name__ == "__main__":
    main()
