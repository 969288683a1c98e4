"""`loramix demo`: LoRA Soups' experiment at small scale, on loramix-tiny and the built-in skills.

Two skill LoRAs (math, code) and two data-mix LoRAs (one LoRA on both skills' rows: all of them, and
only the 5% sample CAT sees; each with as many steps as one skill LoRA) are trained; CAT (α per
module) and tuned-cat (CAT, then its merged adapter trained on the same 5% sample) are fitted; the
data-free merges are made; and every model is scored on the held-out composite task (math-code: a
word problem to a program, scored by running it) and on each skill's own eval split. Each step is
the ordinary command's job function, so --out holds ordinary adapters and JSON, and the equivalent
shell commands are printed at the end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SKILLS = ("math", "code")
COMPOSITE = "math-code"
METRICS = {COMPOSITE: "program", "math": "exact", "code": "exact"}
# table name: (folder, merge method, weights)
MERGES = {
    "linear .5/.5": ("linear", "linear", "0.5,0.5"),
    "cat 1/1": ("cat-one", "cat", "1,1"),
    "ties": ("ties", "ties", "1,1"),
    "dare_ties": ("dare-ties", "dare_ties", "1,1"),
}
# CAT's settings: fit-cat's defaults (α per module from 1/k, lr 0.1; bench/results/compose.md) on 5%
FRACTION = 0.05
CAT_OPTIONS: dict[str, Any] = {"fraction": FRACTION}
# fits besides the merges: table name -> (folder, fit-cat --method)
FITS = {"CAT": ("cat", "cat"), "tuned CAT": ("tuned-cat", "tuned-cat")}
BUDGETS = {
    "full": {"rows": 4000, "eval": 200, "tune_epochs": 10},
    "quick": {"rows": 400, "eval": 40, "tune_epochs": 2},
}


@dataclass
class DemoConfig:
    out: Path = Path("loramix-demo")
    quick: bool = False
    seed: int = 0
    threads: int | None = None
    force: bool = False
    rows: int | None = None  # override the budget (bench/compose.py)
    eval_items: int | None = None

    @property
    def budget(self) -> dict:
        budget = dict(BUDGETS["quick" if self.quick else "full"])
        budget.update({k: v for k, v in (("rows", self.rows), ("eval", self.eval_items)) if v is not None})
        return budget


def models_in_order() -> list[tuple[str, str | None]]:
    """(name in the table, folder under --out; None for the base)."""
    rows: list[tuple[str, str | None]] = [("base", None)]
    rows += [(s, s) for s in SKILLS] + [("data mix", "mix"), ("data mix, CAT's 5%", "mix-sample")]
    rows += [(name, folder) for name, (folder, _) in FITS.items()]
    return rows + [(name, folder) for name, (folder, _, _) in MERGES.items()]


def commands(c: DemoConfig, mix_steps: int) -> list[str]:
    """The demo as shell commands, one per step (what `run_demo` does through the job functions)."""
    o, rows, n, seed = c.out, c.budget["rows"], c.budget["eval"], c.seed
    lines = [f"loramix train-skill builtin:{s} --limit {rows} --seed {seed} -o {o}/{s}" for s in SKILLS]
    lines.append(f"cat {o}/data/math.jsonl {o}/data/code.jsonl > {o}/data/mix.jsonl   # both skills' rows")
    lines.append(f"loramix train-skill {o}/data/mix.jsonl --max-steps {mix_steps} --seed {seed} -o {o}/mix")
    skills = " ".join(f"builtin:{s}" for s in SKILLS)
    lines.append(f"loramix data {skills} --fraction {FRACTION} --seed {seed} --dump {o}/data/sample.jsonl")
    lines.append(
        f"loramix train-skill {o}/data/sample.jsonl --max-steps {mix_steps} --seed {seed} -o {o}/mix-sample"
        "   # CAT's rows"
    )
    cat = " ".join(f"--{k} {v}" for k, v in CAT_OPTIONS.items())
    fit = f"loramix fit-cat {o}/math {o}/code -d builtin:math -d builtin:code {cat} --seed {seed}"
    lines.append(f"{fit} -o {o}/cat")
    lines.append(f"{fit} -m tuned-cat --tune-epochs {c.budget['tune_epochs']} -o {o}/tuned-cat")
    for folder, method, weights in MERGES.values():
        lines.append(f"loramix merge {o}/math {o}/code -m {method} -w {weights} --seed {seed} -o {o}/{folder}")
    adapters = " ".join(f"-a {o}/{folder}" for _, folder in models_in_order() if folder)
    for task, metric in METRICS.items():
        lines.append(f"loramix eval -d builtin:{task} --limit {n} -m {metric} {adapters} --json > {o}/eval-{task}.json")
    lines.append(f"loramix inspect {o}/cat")
    return lines


def table(evals: dict[str, dict]) -> dict:
    """Rows per model: accuracy on each task, and retention (own-split accuracy as a share of
    that skill's own LoRA); CAT's composite gain against the single skills' (the paper's Table 2)."""
    score = {task: {m["name"]: m["score"] for m in doc["models"]} for task, doc in evals.items()}
    rows = []
    for name, folder in models_in_order():
        key = folder or "base"
        row = {"model": name, "folder": folder, **{task: score[task][key] for task in METRICS}}
        row["retention"] = {s: (score[s][key] / score[s][s] if score[s][s] else None) for s in SKILLS}
        rows.append(row)
    comp = score[COMPOSITE]
    gain = {key: comp[key] - comp["base"] for key in comp}
    singles = sum(max(0.0, gain[s]) for s in SKILLS)  # a skill that hurts alone adds nothing to beat
    best = max(rows, key=lambda r: r[COMPOSITE])
    return {
        "rows": rows,
        "composite": COMPOSITE,
        "cat_gain": gain["cat"],
        "tuned_gain": gain["tuned-cat"],
        "single_gains": {s: gain[s] for s in SKILLS},
        "super_linear": gain["cat"] > 0 and gain["cat"] > singles,
        "best_composite": best["model"],
        "best_score": best[COMPOSITE],
    }


def write_sample(c: DemoConfig) -> Path:
    """The rows fit-cat samples (the same call), for the equal-data mix."""
    from loramix.core import data

    folder = c.out / "data"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [row for _, part in data.sample([f"builtin:{s}" for s in SKILLS], FRACTION, c.seed) for row in part]
    data.dump(data.Dataset("sample", rows), folder / "sample.jsonl", force=True)
    return folder / "sample.jsonl"


def write_mix(c: DemoConfig) -> Path:
    """Both skills' training rows (the ones the skill LoRAs saw) in one JSONL file for the data mix."""
    from loramix.core import data

    folder = c.out / "data"
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for skill in SKILLS:
        dataset = data.load(f"builtin:{skill}", c.budget["rows"])
        data.dump(dataset, folder / f"{skill}.jsonl", force=True)
        parts.append((folder / f"{skill}.jsonl").read_text())
    (folder / "mix.jsonl").write_text("".join(parts))
    return folder / "mix.jsonl"


def save_json(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(doc, indent=1) + "\n")


def prepare_folder(c: DemoConfig) -> None:
    """--out is the demo's workspace: refused if it exists (unless --force, and then only when an
    earlier demo made it, never an unrelated folder)."""
    import shutil

    from loramix.core.errors import InputError

    if c.out.exists():
        if not c.force:
            raise InputError(f"{c.out}: already exists", hint="pass --force to replace it, or -o another folder")
        if not c.out.is_dir() or (any(c.out.iterdir()) and not (c.out / MARKER).exists()):
            raise InputError(f"{c.out}: is not a loramix demo folder; --force replaces only those")
        shutil.rmtree(c.out)
    c.out.mkdir(parents=True)
    (c.out / MARKER).write_text("made by loramix demo\n")


MARKER = ".loramix-demo"
