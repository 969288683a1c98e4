"""loramix against mergekit: task arithmetic, TIES and DARE by both tools, compared tensor by tensor.

The same merges are done by mergekit on full models (its `base+lora` inputs) and by
`loramix merge --into-base` on the adapters.

Usage (from the repository root, in the project's virtualenv; mergekit in a venv of its own, made with
`python3 -m venv V && V/bin/pip install torch==2.13.0 && V/bin/pip install mergekit`):

    python bench/vs_mergekit.py --mergekit /tmp/work/mergekit/venv/bin/mergekit-yaml
    python bench/vs_mergekit.py --mergekit ... --tiny-adapters MATH CODE   # reuse trained LoRAs
    python bench/vs_mergekit.py --mergekit ... --models random --hidden 256 --intermediate 688  # quick

Models: `tiny` is loramix-tiny upcast to float32 (exact: its weights are bfloat16) with two LoRAs
trained by `loramix train-skill builtin:math` / `builtin:code --limit 400` (rank 32, alpha 64);
`random` is a random float32 Llama built here (4 layers, hidden 2048, intermediate 5504, vocab 1024)
with two random PEFT LoRAs (rank 16, alpha 32, all seven projections, `init_lora_weights=False`, so
A and B are both non-zero) written by PEFT. Each tool runs as a fresh subprocess (mergekit with an
empty --lora-merge-cache, so both go from base + adapters to a full float32 model); its wall time
and peak RSS (`ru_maxrss` from wait4) are recorded. The merged deltas ΔW = merged − base are
compared per tensor: ‖ΔW_mergekit − ΔW_loramix‖_F / ‖ΔW_loramix‖_F. Every temporary file lives in
one folder under --work-dir, removed at the end unless --keep. Writes bench/results/vs_mergekit.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import torch
from procstats import busy_seconds  # bench/procstats.py
from safetensors import safe_open
from safetensors.torch import load_file, save_file

RESULTS = Path(__file__).resolve().parent / "results" / "vs_mergekit.md"
PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# What differs and why (definitions: docs/architecture.md "merge"; mergekit's generalized_task_arithmetic.py, sparsify.py)
NOTES = """\
- **linear / task_arithmetic**: the same sum Σ w_i·s_i·B_i·A_i; the deltas agree to float32 rounding (mergekit
  gets τ_i back as (W + s·B·A) − W after PEFT's merge_and_unload, so the error grows where ΔW is small next to W;
  the few kept-set mismatches are entries near half of W's rounding step, lost in one tool's W + ΔW only).
- **ties, weights 1/1**: the same definition, the paper's (Yadav et al. 2023, https://arxiv.org/abs/2306.01708):
  keep the top-density entries of each τ_i by magnitude, elect the sign of Σ τ_i, average the agreeing non-zero
  entries (mergekit's `normalize: true` divides by Σ w_i over them, which is the count at weights 1). The few entries
  that differ lie at the trim threshold: mergekit ranks the rounded τ_i = (W + ΔW_i) − W and keeps exactly k by
  argsort, loramix ranks the exact s·B·A and keeps every entry ≥ the k-th magnitude; a sum of exactly 0 elects +
  in mergekit and no sign in loramix.
- **ties, weights 0.5/0.5**: mergekit's normalization cancels equal weights (the result is that of weights 1/1),
  loramix weights τ_i before the disjoint mean, so its delta is half of it (the 2.0 norm ratio). The paper has no
  per-task weights, only λ applied to the merged vector (mergekit's `lambda`); loramix's equal weights act as λ.
  Both follow the paper at weights 1.
- **dare_linear, dare_ties**: DARE (Yu et al. 2023, https://arxiv.org/abs/2311.03099) drops entries at random, so
  the two tools' masks differ (each uses its own generator; no seed makes them equal) and the deltas differ by about
  their own size: the measured difference is what two independent masks give (the expected value is in Details), the
  kept-set mismatch is the 2·q·(1 − q) of independent masks (q: an entry's chance to be zero) and the norms agree.
  Rescaling differs: loramix divides the survivors by the density, the paper's 1/(1 − p); mergekit's `rescale`
  multiplies each masked tensor by ‖τ‖₁ / ‖masked τ‖₁, so its L1 norm is kept exactly and its survivors' factor
  varies from tensor to tensor (the one-adapter row). loramix follows the paper; the two agree in expectation.
- **dare_ties**: mergekit's default `normalize: false` sums the agreeing entries (a larger delta, the norm ratio
  above 1); with `normalize: true` it is the disjoint mean of TIES, as in loramix and in the DARE paper (DARE, then
  the TIES merge), and only the masks differ.
- **time and memory**: mergekit first writes a full merged model per LoRA (PEFT merge_and_unload into
  --lora-merge-cache) and then merges full models; loramix streams each module's delta from the adapters into the
  base's tensors. Both here include process start and imports; the tiny model's times are mostly that.
"""


@dataclass(frozen=True)
class Case:
    name: str  # the loramix method
    weights: tuple[float, ...]
    density: float | None
    mk_method: str
    mk_params: dict = field(default_factory=dict)  # mergekit's global parameters
    adapters: int = 2  # 1: the rescale check on the first adapter alone


CASES = [
    Case("linear", (1, 1), None, "task_arithmetic"),
    Case("linear", (0.5, 0.5), None, "task_arithmetic"),
    Case("ties", (1, 1), 0.2, "ties", {"normalize": True}),
    Case("ties", (0.5, 0.5), 0.2, "ties", {"normalize": True}),
    Case("dare_linear", (1, 1), 0.5, "dare_linear", {"rescale": True}),
    Case("dare_ties", (1, 1), 0.5, "dare_ties", {"normalize": False, "rescale": True}),
    Case("dare_ties", (1, 1), 0.5, "dare_ties", {"normalize": True, "rescale": True}),
    Case("dare_linear", (1,), 0.5, "dare_linear", {"rescale": True}, adapters=1),
]


# ---------------------------------------------------------------- inputs


def tiny_inputs(work: Path, adapters: list[str] | None, env: dict) -> tuple[Path, list[Path]]:
    from loramix.core.models import bundled_path

    src, base = Path(bundled_path()), work / "tiny-f32"
    base.mkdir()
    for f in src.iterdir():
        if f.name != "model.safetensors":
            shutil.copy2(f, base / f.name)
    weights = load_file(src / "model.safetensors")
    save_file({k: v.float() for k, v in weights.items()}, base / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "dtype": "float32"}, indent=2))
    if adapters:
        return base, [Path(a).resolve() for a in adapters]
    out = []
    for skill in ("math", "code"):
        out.append(work / f"tiny-{skill}")
        print(f"training the {skill} LoRA on loramix-tiny (--limit 400)", file=sys.stderr)
        cmd = [sys.executable, "-m", "loramix", "train-skill", f"builtin:{skill}", "--limit", "400", "-o", str(out[-1])]
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return base, out


def random_inputs(work: Path, a: argparse.Namespace) -> tuple[Path, list[Path]]:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from loramix.core.models import bundled_path

    base = work / "random-base"
    torch.manual_seed(a.seed)
    heads = a.hidden // 128
    config = LlamaConfig(
        hidden_size=a.hidden,
        intermediate_size=a.intermediate,
        num_hidden_layers=a.layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        vocab_size=a.vocab,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).float()
    model.save_pretrained(base)
    model.name_or_path = str(base)  # what PEFT records as base_model_name_or_path
    if a.vocab == 1024:  # the bundled tokenizer fits; mergekit copies it
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy2(Path(bundled_path()) / f, base / f)
    out = []
    for i in (1, 2):
        torch.manual_seed(a.seed + i)
        lora = LoraConfig(r=16, lora_alpha=32, target_modules=PROJ, init_lora_weights=False)
        peft_model = get_peft_model(model, lora)
        out.append(work / f"random-lora{i}")
        peft_model.save_pretrained(out[-1])
        model = peft_model.unload()
    return base, out


def lora_deltas(folder: Path) -> dict[str, torch.Tensor]:
    """Module weight name -> s·B·A (float32) of a plain PEFT LoRA (no rank/alpha patterns)."""
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert not cfg.get("rank_pattern") and not cfg.get("alpha_pattern") and not cfg.get("use_rslora")
    s = cfg["lora_alpha"] / cfg["r"]
    t = load_file(folder / "adapter_model.safetensors")
    names = [k.removesuffix(".lora_A.weight") for k in t if k.endswith(".lora_A.weight")]
    return {
        n.removeprefix("base_model.model.") + ".weight": s
        * t[f"{n}.lora_B.weight"].float()
        @ t[f"{n}.lora_A.weight"].float()
        for n in names
    }


# ---------------------------------------------------------------- running the tools


# Runs the tool from a small launcher: a child's ru_maxrss starts at its parent's RSS at fork (Linux keeps the
# high-water mark across exec), and this process holds the models; the launcher holds only an interpreter.
LAUNCHER = """import json, os, subprocess, sys, time
t0 = time.perf_counter()
_, status, usage = os.wait4(subprocess.Popen(sys.argv[2:]).pid, 0)
doc = [os.waitstatus_to_exitcode(status), time.perf_counter() - t0, usage.ru_maxrss / 1024]
open(sys.argv[1], "w").write(json.dumps(doc))
"""


def run_timed(cmd: list[str], log: Path, env: dict) -> tuple[float, float, float | None]:
    """(wall s, peak RSS MB, other processes' share of the CPUs) of one subprocess."""
    before, children = busy_seconds(), sum(os.times()[2:4])
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-c", LAUNCHER, str(log) + ".json", *cmd], stdout=f, stderr=f, env=env)
    code, wall, peak = json.loads(Path(str(log) + ".json").read_text())
    if code:
        raise SystemExit(f"{shlex.join(cmd)} failed ({code}):\n{log.read_text()[-3000:]}")
    after = busy_seconds()
    others = (after[0] - before[0]) - (after[1] - before[1]) - (sum(os.times()[2:4]) - children)
    load = max(others, 0.0) / (wall * os.cpu_count()) if wall >= 0.5 else None
    return wall, peak, load


def mergekit_config(case: Case, base: Path, loras: list[Path]) -> str:
    models = []
    for w, lora in zip(case.weights, loras):
        params = {"weight": w} | ({"density": case.density} if case.density is not None else {})
        models.append({"model": f"{base}+{lora}", "parameters": params})
    doc = {"merge_method": case.mk_method, "base_model": str(base), "models": models}
    if case.mk_params:
        doc["parameters"] = case.mk_params
    return json.dumps(doc | {"dtype": "float32", "out_dtype": "float32"}, indent=2)  # JSON is YAML


def mergekit_cmd(a: argparse.Namespace, config: Path, out: Path, cache: Path) -> list[str]:
    return [a.mergekit, str(config), str(out), "--lora-merge-cache", str(cache), "--lora-merge-dtype", "float32"] + [
        "--random-seed",
        str(a.seed),
        "--quiet",
        "--no-write-model-card",
    ]


def loramix_cmd(case: Case, base: Path, loras: list[Path], out: Path, seed: int) -> list[str]:
    cmd = [sys.executable, "-m", "loramix", "merge", *map(str, loras), "-m", case.name, "--into-base", str(base)]
    cmd += ["--weights", ",".join(f"{w:g}" for w in case.weights), "--seed", str(seed), "-o", str(out)]
    return cmd + (["--density", f"{case.density:g}"] if case.density is not None else [])


# ---------------------------------------------------------------- comparing


def tensors(folder: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            out.update(dict.fromkeys(f.keys(), path))
    return out


def read(files: dict[str, Path], key: str) -> torch.Tensor:
    with safe_open(str(files[key]), framework="pt") as f:
        return f.get_tensor(key).float()


def compare(base: Path, mk: Path, lm: Path, taus: dict[str, torch.Tensor], case: Case) -> dict:
    """Per-tensor relative difference of the deltas, with norms, kept-set and DARE statistics."""
    fb, fm, fl = tensors(base), tensors(mk), tensors(lm)
    rel, norm_ratio, untouched, mismatch, total = [], [], 0.0, 0, 0
    predicted, scale_lm, scale_mk, l1_lm, l1_mk = [], [], [], [], []
    p = case.density or 1.0
    for key in fb:
        w0 = read(fb, key)
        dm, dl = read(fm, key) - w0, read(fl, key) - w0
        if key not in taus:  # not a LoRA target: both must leave it as it is
            untouched = max(untouched, dm.abs().max().item(), dl.abs().max().item())
            continue
        rel.append(((dm - dl).norm() / dl.norm()).item())
        norm_ratio.append((dm.norm() / dl.norm()).item())
        mismatch += int(((dm != 0) != (dl != 0)).sum())
        total += dl.numel()
        ts = [w * taus[key][i] for i, w in enumerate(case.weights)]
        if case.name == "dare_linear":  # independent masks: E‖D1 − D2‖² = 2(1−p)/p Σ‖w τ‖²
            var = (1 - p) / p * sum(t.square().sum() for t in ts)
            predicted.append((2 * var / (sum(ts).square().sum() + var)).sqrt().item())
        if case.adapters == 1:  # how the survivors were rescaled
            kept = (dl != 0) & (ts[0] != 0)
            scale_lm.append((dl[kept] / ts[0][kept]).median().item())
            kept = (dm != 0) & (ts[0] != 0)
            scale_mk.append((dm[kept] / ts[0][kept]).median().item())
            l1_lm.append((dl.abs().sum() / ts[0].abs().sum()).item())
            l1_mk.append((dm.abs().sum() / ts[0].abs().sum()).item())
    res = {
        "max_rel": max(rel),
        "mean_rel": sum(rel) / len(rel),
        "norm_ratio": (min(norm_ratio), max(norm_ratio)),
        "kept_mismatch": (mismatch, total),
        "untouched_max_abs": untouched,
        "tensors": len(rel),
    }
    if predicted:
        res["predicted_mean_rel"] = sum(predicted) / len(predicted)
    if scale_lm:
        res |= {
            "survivor_scale_lm": (min(scale_lm), max(scale_lm)),
            "survivor_scale_mk": (min(scale_mk), max(scale_mk)),
            "l1_ratio_lm": (min(l1_lm), max(l1_lm)),
            "l1_ratio_mk": (min(l1_mk), max(l1_mk)),
        }
    return res


# ---------------------------------------------------------------- the report


def label(case: Case) -> tuple[str, str]:
    w = "/".join(f"{x:g}" for x in case.weights)
    d = f", density {case.density:g}" if case.density is not None else ""
    lm = f"`{case.name}` w {w}{d}" + (" (1 adapter)" if case.adapters == 1 else "")
    mk = f"`{case.mk_method}`" + "".join(f", {k} {str(v).lower()}" for k, v in case.mk_params.items())
    return lm, mk


def busy(run: tuple) -> str:
    """A mark on a time measured while other processes used more than a tenth of the CPUs."""
    return "*" if run[2] is not None and run[2] > 0.1 else ""


def table(rows: list[dict]) -> str:
    head = "| model | loramix | mergekit | max rel. diff | mean rel. diff | ‖ΔW_mk‖/‖ΔW_lm‖ | kept-set mismatch | loramix s | mergekit s | loramix peak MB | mergekit peak MB |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lm, mk = label(r["case"])
        c = r["cmp"]
        lines.append(
            f"| {r['model']} | {lm} | {mk} | {c['max_rel']:.2e} | {c['mean_rel']:.2e} | "
            f"{c['norm_ratio'][0]:.4f}–{c['norm_ratio'][1]:.4f} | {c['kept_mismatch'][0]:,} ({100 * c['kept_mismatch'][0] / c['kept_mismatch'][1]:.2g}%) | "
            f"{r['lm'][0]:.1f}{busy(r['lm'])} | {r['mk'][0]:.1f}{busy(r['mk'])} | {r['lm'][1]:.0f} | {r['mk'][1]:.0f} |"
        )
    return "\n".join(lines)


def details(rows: list[dict]) -> str:
    out = []
    for r in rows:
        c, (lm, mk) = r["cmp"], label(r["case"])
        extra = [f"{c['tensors']} merged tensors", f"other tensors' largest change {c['untouched_max_abs']:.1e}"]
        if "predicted_mean_rel" in c:
            extra.append(f"rel. diff expected from independent masks {c['predicted_mean_rel']:.3f}")
        if "survivor_scale_lm" in c:
            extra += [
                f"{who}: survivors × {c[f'survivor_scale_{who}'][0]:.5f}–{c[f'survivor_scale_{who}'][1]:.5f} "
                f"(per-tensor medians of ΔW/τ), ‖ΔW‖₁/‖τ‖₁ {c[f'l1_ratio_{who}'][0]:.5f}–{c[f'l1_ratio_{who}'][1]:.5f}"
                for who in ("lm", "mk")
            ]
        if "mk_warm" in r:
            extra.append(
                f"mergekit again with its LoRA cache filled: {r['mk_warm'][0]:.1f} s, {r['mk_warm'][1]:.0f} MB"
            )
        loads = [f"{x:.0%}" for x in (r["lm"][2], r["mk"][2]) if x is not None]
        extra.append("other processes' CPU (lm, mk) " + ", ".join(loads))
        out.append(f"- {r['model']}, {lm} vs {mk}: " + "; ".join(extra))
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mergekit", required=True, help="path of mergekit-yaml in mergekit's own venv")
    p.add_argument("--models", default="tiny,random", help="comma-separated: tiny, random")
    p.add_argument("--tiny-adapters", nargs=2, metavar=("MATH", "CODE"), help="trained LoRAs (else trained here)")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--intermediate", type=int, default=5504)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=None, help="where the temporary folder goes [default: the system's]")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--no-write", action="store_true", help=f"print only; do not write {RESULTS.name}")
    a = p.parse_args()
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    mk_python = Path(a.mergekit).parent / "python"
    mk_versions = subprocess.run(
        [str(mk_python), "-c", "from importlib.metadata import version as v; print(*[p + ' ' + v(p) for p in "
         "('mergekit', 'torch', 'transformers', 'peft')], sep=', ')"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="vs_mergekit_", dir=a.work_dir))
    rows, examples = [], {}
    try:
        for model in a.models.split(","):
            print(f"== {model}: building inputs", file=sys.stderr)
            base, loras = tiny_inputs(work, a.tiny_adapters, env) if model == "tiny" else random_inputs(work, a)
            taus = [lora_deltas(lo) for lo in loras]
            taus = {k: torch.stack([t[k] for t in taus]) for k in taus[0]}
            for i, case in enumerate(CASES):
                run = work / f"{model}-{i}"
                run.mkdir()
                use = loras[: case.adapters]
                (run / "mk.yaml").write_text(mergekit_config(case, base, use))
                mk_cmd = mergekit_cmd(a, run / "mk.yaml", run / "mk", run / "cache")
                lm_cmd = loramix_cmd(case, base, use, run / "lm", a.seed)
                examples.setdefault(case.mk_method, ((run / "mk.yaml").read_text(), mk_cmd, lm_cmd))
                print(f"   {label(case)[0]} vs {label(case)[1]}", file=sys.stderr)
                lm = run_timed(lm_cmd, run / "lm.log", env)
                mk = run_timed(mk_cmd, run / "mk.log", env)
                row = {"model": model, "case": case, "lm": lm, "mk": mk}
                if i == 0:  # how much of mergekit's time is PEFT's merge_and_unload into its cache
                    row["mk_warm"] = run_timed(
                        mergekit_cmd(a, run / "mk.yaml", run / "mk2", run / "cache"), run / "mk2.log", env
                    )
                row["cmp"] = compare(base, run / "mk", run / "lm", taus, case)
                rows.append(row)
                shutil.rmtree(run)
            del taus
            shutil.rmtree(base)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(table(rows))
    print(details(rows))
    if not a.no_write:
        write_results(a, rows, examples, mk_versions)


def write_results(a: argparse.Namespace, rows: list[dict], examples: dict, mk_versions: str) -> None:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    machine = (
        f"nproc={os.cpu_count()}, python {platform.python_version()}; loramix venv: torch {torch.__version__}, "
        f"transformers {version('transformers')}, peft {version('peft')}; mergekit venv: {mk_versions}; loramix at commit {rev}"
    )
    yaml, mk_cmd, lm_cmd = examples.get("ties", next(iter(examples.values())))
    text = rf"""# loramix vs mergekit

Command: `python {shlex.join(["bench/vs_mergekit.py", *sys.argv[1:]])}`

Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC

- machine: {machine}
- mergekit's venv: `python3 -m venv V && V/bin/pip install torch==2.13.0 && V/bin/pip install mergekit` (no pin conflicts)
- models: tiny = loramix-tiny upcast to float32, LoRAs from `loramix train-skill builtin:math|builtin:code --limit 400`
  (rank 32, alpha 64); random = random float32 Llama, {a.layers} layers, hidden {a.hidden}, intermediate
  {a.intermediate}, vocab {a.vocab}, two PEFT LoRAs rank 16, alpha 32 on all seven projections (`init_lora_weights=False`)
- rel. diff: per merged tensor ‖ΔW_mergekit − ΔW_loramix‖_F / ‖ΔW_loramix‖_F, ΔW = merged − base, max and mean over
  the tensors; kept-set mismatch: share of entries that are zero in one delta and not in the other
- each tool in a fresh process from base + adapters to a full float32 model: mergekit with an empty
  `--lora-merge-cache` (so its time includes PEFT's merge_and_unload of each LoRA into a cached full model),
  loramix `merge --into-base`; wall seconds and peak RSS (ru_maxrss)

{table(rows)}

\* other processes used more than a tenth of the CPUs during that run (shares in Details); this machine is shared.

Details:

{details(rows)}

What differs and why:

{NOTES}
Example (ties) mergekit config (JSON is YAML) and commands (the paths were in the removed temporary folder):

```yaml
{yaml}
```

```bash
{shlex.join(mk_cmd)}
{shlex.join(lm_cmd)}
```
"""
    RESULTS.write_text(text)
    print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
