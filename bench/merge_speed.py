"""Merge speed, memory and exactness: loramix's merge engine against PEFT's `add_weighted_adapter`.

Usage (from the repository root, in the project's virtualenv):

    python bench/merge_speed.py --quick            # q_proj and gate_proj of one block (debugging)
    python bench/merge_speed.py                    # one Llama-2-7B block, all seven modules
    python bench/merge_speed.py --layers 2 --targets q_proj,down_proj

Two random rank-32 LoRA adapters (alpha 64, so scale 2, float32) with Llama-2-7B module shapes are
merged with weights [1, 1] by each (tool, method) in a fresh subprocess (this script re-invoked
with a hidden `--worker` flag), which reports its wall time per module and in total, its peak RSS
above the RSS once its inputs are built (`ru_maxrss`, after resetting the high-water mark), and the
relative Frobenius error of every merged module's ΔW against an exact reference:

- linear, cat, svd: the exact sum Σ s·B_i·A_i;
- ties (loramix, PEFT `ties_svd`, PEFT factor-wise `ties`): the exact full-rank TIES delta, computed
  here by a plain implementation (top-density trim, sign of the sum, disjoint mean);
- dare_ties: drops are random and differ between the tools, so each tool is measured against its
  own full-rank result (loramix: `merge_module` with the same seed; PEFT: its `dare_ties` replayed
  from the recorded RNG state), i.e. the truncation error; loramix's is also set against the optimal
  rank-64 truncation of its full-rank result (from its singular values).

PEFT runs on a tiny module tree of `nn.Linear`s with the right shapes whose base weights are
stride-0 views (no 7B allocation). PEFT's factor-wise `linear` and `ties` combine A and B
separately; only their error is of interest. Results are printed and written to
bench/results/merge_speed.md with the command line and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from procstats import busy_seconds, other_load, reset_peak_rss, rss_bytes  # bench/procstats.py

RANK, ALPHA, NEW_RANK = 32, 64, 64
SCALE = ALPHA / RANK
TIES_DENSITY, DARE_DENSITY = 0.2, 0.5
B_STD = 0.01  # trained LoRA B factors are small but non-zero
NAMES = ("one", "two")  # PEFT adapter names
MERGED = "merged"
# module -> (parent, out_features, in_features), Llama-2-7B
SHAPES = {
    "q_proj": ("self_attn", 4096, 4096),
    "k_proj": ("self_attn", 4096, 4096),
    "v_proj": ("self_attn", 4096, 4096),
    "o_proj": ("self_attn", 4096, 4096),
    "gate_proj": ("mlp", 11008, 4096),
    "up_proj": ("mlp", 11008, 4096),
    "down_proj": ("mlp", 4096, 11008),
}
QUICK_TARGETS = "q_proj,gate_proj"
RESULTS = Path(__file__).resolve().parent / "results" / "merge_speed.md"


@dataclass(frozen=True)
class Run:
    tool: str  # "loramix" or "peft"
    method: str  # loramix REGISTRY name or PEFT combination_type
    ref: str  # "sum", "ties" or "own" (the tool's own full-rank result)
    density: float | None = None
    rank: int | None = None  # None: the tool's default (Σ r_i = 64 for linear and cat)

    @property
    def key(self) -> str:
        return f"{self.tool}:{self.method}"


RUNS = [
    Run("loramix", "linear", "sum"),
    Run("loramix", "cat", "sum"),
    Run("loramix", "svd", "sum", rank=NEW_RANK),
    Run("loramix", "ties", "ties", TIES_DENSITY, NEW_RANK),
    Run("loramix", "dare_ties", "own", DARE_DENSITY, NEW_RANK),
    Run("peft", "cat", "sum"),
    Run("peft", "svd", "sum", rank=NEW_RANK),
    Run("peft", "ties_svd", "ties", TIES_DENSITY, NEW_RANK),
    Run("peft", "dare_ties_svd", "own", DARE_DENSITY, NEW_RANK),
    Run("peft", "linear", "sum"),
    Run("peft", "ties", "ties", TIES_DENSITY),
]
RUN_BY_KEY = {r.key: r for r in RUNS}


# ---------------------------------------------------------------- inputs (both tools, same numbers)


def module_list(layers: int, targets: list[str]) -> list[tuple[str, int, int]]:
    """(name, out, in) of every targeted module, named as in a Llama model."""
    return [
        (f"model.layers.{layer}.{SHAPES[t][0]}.{t}", SHAPES[t][1], SHAPES[t][2])
        for layer in range(layers)
        for t in targets
    ]


def fill_lora(A, B, adapter: int, name: str) -> None:
    """Fill A (r, in) ~ N(0, 1/in) and B (out, r) ~ N(0, B_STD²) in place, seeded by adapter and module."""
    import torch

    g = torch.Generator().manual_seed(zlib.crc32(f"{adapter}:{name}".encode()))
    A.normal_(0.0, 1.0 / math.sqrt(A.shape[1]), generator=g)
    B.normal_(0.0, B_STD, generator=g)


def loramix_inputs(modules):
    """Two in-memory loramix Adapters."""
    import torch

    from loramix.core.adapters import Adapter, LoraModule

    adapters = []
    for i in range(len(NAMES)):
        mods = {}
        for name, out, inp in modules:
            A, B = torch.empty(RANK, inp), torch.empty(out, RANK)
            fill_lora(A, B, i, name)
            mods[name] = LoraModule(A=A, B=B, scale=SCALE)
        config = {"r": RANK, "lora_alpha": ALPHA, "base_model_name_or_path": "bench/llama-2-7b-shapes"}
        adapters.append(Adapter(path=None, config=config, modules=mods))
    return adapters


def placeholder_linear(out: int, inp: int):
    """An nn.Linear of the right shape whose weight is a stride-0 view: 4 bytes, not out·in·4."""
    import torch
    from torch import nn

    layer = nn.Linear(inp, out, bias=False, device="meta")
    layer.weight = nn.Parameter(torch.zeros(()).expand(out, inp), requires_grad=False)
    return layer


def tiny_model(modules):
    """A module tree holding only the targeted linears, at their paths in a Llama model."""
    from torch import nn

    root = nn.Module()
    for name, out, inp in modules:
        *path, leaf = name.split(".")
        parent = root
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, placeholder_linear(out, inp))
    return root


def lora_layers(peft_model):
    """(module name relative to the base model, LoraLayer) pairs."""
    from peft.tuners.lora import LoraLayer

    root = peft_model.base_model.model
    return [(n, m) for n, m in root.named_modules() if isinstance(m, LoraLayer)]


def peft_inputs(modules):
    """The tiny model wrapped by PEFT with two adapters holding the same numbers as loramix's."""
    from peft import LoraConfig, get_peft_model

    targets = sorted({name.rsplit(".", 1)[-1] for name, _, _ in modules})
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets, lora_dropout=0.0)
    model = get_peft_model(tiny_model(modules), config, adapter_name=NAMES[0])
    model.add_adapter(NAMES[1], config)
    for name, layer in lora_layers(model):
        for i, adapter in enumerate(NAMES):
            fill_lora(layer.lora_A[adapter].weight.data, layer.lora_B[adapter].weight.data, i, name)
    return model.requires_grad_(False)  # as when loaded for inference: no autograd graph in the merge


def factor_bytes(modules) -> int:
    return len(NAMES) * sum(4 * RANK * (out + inp) for _, out, inp in modules)


# ---------------------------------------------------------------- the merges, timed


def run_loramix(run: Run, adapters):
    """Merge with loramix; returns ({name: (A, B, scale)}, {name: seconds}, total seconds, reported errors)."""
    from loramix.merge.engine import MergeOptions, merge_to_factors
    from loramix.merge.methods import REGISTRY

    opts = MergeOptions(weights=[1.0, 1.0], density=run.density, rank=run.rank)
    stamps: list[tuple[str, float]] = []
    t0 = time.perf_counter()
    result = merge_to_factors(
        REGISTRY[run.method], adapters, opts, on_module=lambda n: stamps.append((n, time.perf_counter()))
    )
    total = time.perf_counter() - t0
    per_module, last = {}, t0
    for name, t in stamps:
        per_module[name], last = t - last, t
    factors = {n: (A, B, 1.0) for n, (A, B) in result.factors.items()}
    return factors, per_module, total, dict(result.errors)


def instrument_peft(lora_model, times: dict, states: dict) -> None:
    """Time PEFT's per-module combine calls and record the RNG state each one starts from."""
    from peft.tuners.lora import LoraLayer

    names = {id(m): n for n, m in lora_model.model.named_modules()}
    for attr in ("_svd_generalized_task_arithmetic_weighted_adapter", "_generalized_task_arithmetic_weighted_adapter"):
        original = getattr(lora_model, attr)

        def wrapped(*args, _original=original, **kwargs):
            import torch

            name = names[id(next(a for a in args if isinstance(a, LoraLayer)))]
            states[name] = torch.get_rng_state()
            t0 = time.perf_counter()
            out = _original(*args, **kwargs)
            times[name] = time.perf_counter() - t0
            return out

        setattr(lora_model, attr, wrapped)


def run_peft(run: Run, model):
    """Merge with PEFT; returns ({name: (A, B, scaling)}, {name: seconds}, total seconds, RNG states)."""
    times: dict[str, float] = {}
    states: dict = {}
    instrument_peft(model.base_model, times, states)
    kwargs = {"combination_type": run.method, "density": run.density}
    if run.rank is not None:
        kwargs["svd_rank"] = run.rank
    t0 = time.perf_counter()
    model.base_model.add_weighted_adapter(list(NAMES), [1.0, 1.0], MERGED, **kwargs)
    total = time.perf_counter() - t0
    factors = {
        n: (layer.lora_A[MERGED].weight.data, layer.lora_B[MERGED].weight.data, layer.scaling[MERGED])
        for n, layer in lora_layers(model)
    }
    return factors, times, total, states


# ---------------------------------------------------------------- exact references and errors


def exact_sum(pairs):
    """Σ s·B_i·A_i (weights 1) as a full float32 matrix."""
    return sum(s * (B @ A) for A, B, s in pairs)


def trim_top(delta, density: float):
    """Keep the int(density·numel) largest-magnitude entries of delta (ties at the threshold kept)."""
    import torch

    keep = int(density * delta.numel())
    flat = delta.abs().reshape(-1)
    threshold = torch.kthvalue(flat, flat.numel() - keep + 1).values
    return torch.where(delta.abs() >= threshold, delta, 0.0)


def ties_reference(pairs, density: float):
    """Full-rank TIES with weights 1: trim each delta, elect the sign of the sum, average agreeing entries."""
    import torch

    tau = torch.stack([trim_top(s * (B @ A), density) for A, B, s in pairs])
    sign = torch.where(tau.sum(dim=0) >= 0, 1.0, -1.0)
    agree = torch.sign(tau) == sign
    return torch.where(agree, tau, 0.0).sum(dim=0) / agree.sum(dim=0).clamp(min=1)


def rel_err(ref, got) -> float:
    import torch

    den = float(torch.linalg.vector_norm(ref, dtype=torch.float64))
    num = float(torch.linalg.vector_norm(ref - got, dtype=torch.float64))
    return num / den if den > 0 else num


def optimal_trunc_err(full, rank: int) -> float:
    """Error of the best rank-`rank` approximation of `full` (Eckart–Young), from its singular values."""
    import torch

    s2 = torch.linalg.svdvals(full).double() ** 2
    return math.sqrt(float(s2[rank:].sum()) / float(s2.sum()))


def loramix_own_full(run: Run, adapters) -> Callable:
    """name -> loramix's full-rank merged delta (same seed, so the same drops as the timed merge)."""
    from loramix.merge.engine import MergeOptions, merge_module
    from loramix.merge.methods import REGISTRY

    opts = MergeOptions(weights=[1.0, 1.0], density=run.density, rank=run.rank)
    return lambda name: merge_module(REGISTRY[run.method], adapters, opts, name).full


def peft_own_full(run: Run, model, states: dict) -> Callable:
    """name -> PEFT's full-rank dare_ties delta, replayed from the RNG state its merge started from."""
    import torch
    from peft.utils.merge_utils import dare_ties

    layers = dict(lora_layers(model))

    def full(name):
        torch.set_rng_state(states[name])
        deltas = [layers[name].get_delta_weight(a) for a in NAMES]
        return dare_ties(deltas, torch.tensor([1.0, 1.0]), run.density, "total")

    return full


def module_errors(run: Run, factors: dict, pairs: dict, own_full: Callable | None):
    """({name: relative error of the merged ΔW}, {name: optimal truncation error} or None)."""
    errors, optimum = {}, ({} if run.ref == "own" and run.tool == "loramix" else None)
    for name, (A, B, s) in factors.items():
        if run.ref == "sum":
            ref = exact_sum(pairs[name])
        elif run.ref == "ties":
            ref = ties_reference(pairs[name], run.density)
        else:
            ref = own_full(name)
        errors[name] = rel_err(ref, s * (B.float() @ A.float()))
        if optimum is not None:
            optimum[name] = optimal_trunc_err(ref, run.rank)
        del ref
    return errors, optimum


# ---------------------------------------------------------------- the worker (one fresh process per run)


def warm_up() -> None:
    """Load the BLAS/LAPACK kernels both tools use, so no one pays for first calls."""
    import torch

    x = torch.randn(128, 96)
    torch.linalg.qr(x), torch.linalg.svd(x), torch.linalg.svd(x, full_matrices=False), torch.linalg.svdvals(x)
    (x @ x.T).abs().reshape(-1).kthvalue(5), torch.topk(x.reshape(-1), 5), torch.bernoulli(torch.full_like(x, 0.5))
    torch.bincount(torch.arange(10)), torch.rand(x.shape) < 0.5


REHEARSAL_MODULES = [("model.layers.0.mlp.gate_proj", 2048, 1024), ("model.layers.0.mlp.down_proj", 1024, 2048)]


def rehearse(run: Run) -> None:
    """One full merge with the same tool and method on two small modules, before measuring: the
    libraries' code pages and workspaces (a fixed cost, tens of MB, whatever the model size) are
    then in place and the measured peak is the merge's own memory. Done for every tool alike."""
    import gc

    inputs = loramix_inputs(REHEARSAL_MODULES) if run.tool == "loramix" else peft_inputs(REHEARSAL_MODULES)
    (run_loramix if run.tool == "loramix" else run_peft)(run, inputs)
    del inputs
    gc.collect()


def input_pairs(run: Run, inputs) -> dict:
    """{name: [(A, B, scale) per adapter]} for the references, read from the tool's own inputs."""
    if run.tool == "loramix":
        return {n: [(a.modules[n].A, a.modules[n].B, a.modules[n].scale) for a in inputs] for n in inputs[0].modules}
    return {
        n: [(layer.lora_A[a].weight.data, layer.lora_B[a].weight.data, layer.scaling[a]) for a in NAMES]
        for n, layer in lora_layers(inputs)
    }


def worker(key: str, modules, threads: int, rehearsal: bool = True) -> dict:
    import resource

    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    run = RUN_BY_KEY[key]
    warm_up()
    if rehearsal:
        rehearse(run)
    inputs = loramix_inputs(modules) if run.tool == "loramix" else peft_inputs(modules)
    reset_ok = reset_peak_rss()
    rss0 = rss_bytes()
    busy0 = busy_seconds()
    if run.tool == "loramix":
        factors, times, total, extra = run_loramix(run, inputs)
    else:
        factors, times, total, extra = run_peft(run, inputs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    load = other_load(busy0, busy_seconds(), total)
    own = None
    if run.ref == "own":
        own = loramix_own_full(run, inputs) if run.tool == "loramix" else peft_own_full(run, inputs, extra)
    with torch.no_grad():
        errors, optimum = module_errors(run, factors, input_pairs(run, inputs), own)
    ranks = sorted({A.shape[0] for A, _, _ in factors.values()})
    return {
        "key": key,
        "total_s": total,
        "module_s": times,
        "rss_inputs": rss0,
        "peak_extra": peak - rss0,
        "peak_reset": reset_ok,
        "errors": errors,
        "optimum": optimum,
        "ranks": ranks,
        "reported": extra if run.tool == "loramix" else None,
        "threads": torch.get_num_threads(),
        "other_load": load,
    }


# ---------------------------------------------------------------- orchestration and report


def spawn(key: str, args) -> dict:
    """Run one (tool, method) in a fresh interpreter and return its JSON result."""
    cmd = [sys.executable, __file__, "--worker", key, "--layers", str(args.layers), "--targets", args.targets]
    cmd += ["--threads", str(args.threads)] + (["--cold"] if args.cold else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"worker {key} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def code_state() -> str:
    """The loramix commit measured, and its files that differ from it in the working tree."""

    def git(*cmd):
        out = subprocess.run(["git", *cmd], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        return out.stdout.rstrip() if out.returncode == 0 else "?"

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "loramix").splitlines() if line.strip()]
    return f"loramix at commit {git('rev-parse', '--short', 'HEAD')}" + (
        f", modified: {', '.join(dirty)}" if dirty else ""
    )


def machine_lines(args, modules) -> list[str]:
    with open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "?")
    largest = max(out * inp for _, out, inp in modules)
    return [
        f"- machine: nproc={os.cpu_count()}, affinity={len(os.sched_getaffinity(0))} cores, {cpu}, "
        f"python {platform.python_version()}, torch {version('torch')}, peft {version('peft')}, "
        f"torch threads {args.threads}; {code_state()}",
        f"- inputs: 2 adapters, rank {RANK}, alpha {ALPHA} (scale {SCALE:g}), float32, weights [1, 1]; "
        f"{len(modules)} modules ({args.layers} layer(s) × {args.targets}); "
        f"densities: ties {TIES_DENSITY}, dare_ties {DARE_DENSITY}; merged rank {NEW_RANK}",
        f"- inputs' size {mb(factor_bytes(modules))} MB; one full delta (largest module) {mb(4 * largest)} MB; "
        f"memory target for loramix: peak ≤ 2 × inputs + one full delta = "
        f"{mb(2 * factor_bytes(modules) + 4 * largest)} MB",
    ]


def mb(n: float) -> str:
    return f"{n / 2**20:.1f}"


def fmt_err(e: float | None) -> str:
    return "-" if e is None else f"{e:.3e}"


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


REF_TEXT = {"sum": "exact Σ ΔW_i", "ties": "exact full-rank TIES", "own": "own full-rank result"}


def summary_table(results: dict, modules, target_bytes: int) -> list[str]:
    lines = [
        "| tool | method | rank | total s | mean s/module | peak MB above inputs | ≤ mem target | "
        "max rel. error | error against | loramix's reported max error | other processes' CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in RUNS:
        r = results[run.key]
        ok = ("yes" if r["peak_extra"] <= target_bytes else "**NO**") if run.tool == "loramix" else ""
        reported = max(r["reported"].values()) if r["reported"] else None
        lines.append(
            f"| {run.tool} | {run.method} | {'/'.join(map(str, r['ranks']))} | {r['total_s']:.3f} | "
            f"{r['total_s'] / len(modules):.3f} | {mb(r['peak_extra'])} | {ok} | {fmt_err(max(r['errors'].values()))} | "
            f"{REF_TEXT[run.ref]} | {fmt_err(reported)} | {fmt_pct(r['other_load'])} |"
        )
    return lines


def module_time_table(results: dict, modules) -> list[str]:
    keys = [r.key for r in RUNS]
    lines = ["| module | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, _, _ in modules:
        cells = [results[k]["module_s"].get(name) for k in keys]
        lines.append(f"| {name} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")
    return lines


def module_error_table(results: dict, modules) -> list[str]:
    lt, pt = results["loramix:ties"]["errors"], results["peft:ties_svd"]["errors"]
    ld, pd = results["loramix:dare_ties"]["errors"], results["peft:dare_ties_svd"]["errors"]
    lo = results["loramix:dare_ties"]["optimum"]
    lines = [
        "| module | loramix ties | PEFT ties_svd (optimal) | ratio | loramix dare_ties (own) | optimum | ratio "
        "| PEFT dare_ties_svd (own) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, _, _ in modules:
        lines.append(
            f"| {name} | {lt[name]:.5f} | {pt[name]:.5f} | {lt[name] / pt[name]:.4f} | {ld[name]:.5f} | "
            f"{lo[name]:.5f} | {ld[name] / lo[name]:.4f} | {pd[name]:.5f} |"
        )
    return lines


def check(label: str, value: float, target: str, ok: bool | None, fmt: str = ".4g") -> str:
    verdict = "" if ok is None else (" — met" if ok else " — **NOT MET**")
    return f"- {label}: {value:{fmt}}{f' (target {target})' if target else ''}{verdict}"


def max_ratio(num: dict, den: dict) -> float:
    return max(num[n] / den[n] if den[n] > 0 else math.inf for n in num)


def ratio_lines(results: dict, target_bytes: int) -> list[str]:
    t = {k: r["total_s"] for k, r in results.items()}
    e = {k: r["errors"] for k, r in results.items()}
    lines = [
        check(
            "time PEFT svd / loramix linear",
            t["peft:svd"] / t["loramix:linear"],
            "≥ 50×",
            t["peft:svd"] / t["loramix:linear"] >= 50,
        ),
        check(
            "time PEFT svd / loramix cat",
            t["peft:svd"] / t["loramix:cat"],
            "≥ 50×",
            t["peft:svd"] / t["loramix:cat"] >= 50,
        ),
        check(
            "time PEFT ties_svd / loramix ties",
            t["peft:ties_svd"] / t["loramix:ties"],
            "≥ 20×",
            t["peft:ties_svd"] / t["loramix:ties"] >= 20,
        ),
        check(
            "time PEFT dare_ties_svd / loramix dare_ties",
            t["peft:dare_ties_svd"] / t["loramix:dare_ties"],
            "≥ 20×",
            t["peft:dare_ties_svd"] / t["loramix:dare_ties"] >= 20,
        ),
        check("time PEFT svd / loramix svd", t["peft:svd"] / t["loramix:svd"], "", None),
        check("time PEFT cat / loramix cat", t["peft:cat"] / t["loramix:cat"], "", None),
        check(
            "error loramix ties / PEFT ties_svd (worst module)",
            max_ratio(e["loramix:ties"], e["peft:ties_svd"]),
            "≤ 1.01",
            max_ratio(e["loramix:ties"], e["peft:ties_svd"]) <= 1.01,
            ".5f",
        ),
        check(
            "error loramix dare_ties / optimal truncation of its own result (worst module)",
            max_ratio(e["loramix:dare_ties"], results["loramix:dare_ties"]["optimum"]),
            "≤ 1.01",
            max_ratio(e["loramix:dare_ties"], results["loramix:dare_ties"]["optimum"]) <= 1.01,
            ".5f",
        ),
        check(
            "error loramix dare_ties / PEFT dare_ties_svd, each against its own full-rank result (different drops)",
            max_ratio(e["loramix:dare_ties"], e["peft:dare_ties_svd"]),
            "",
            None,
            ".5f",
        ),
        check(
            "PEFT factor-wise linear, max error against the exact sum", max(e["peft:linear"].values()), "", None, ".4f"
        ),
        check("PEFT factor-wise ties, max error against exact TIES", max(e["peft:ties"].values()), "", None, ".4f"),
    ]
    for run in RUNS:
        if run.tool == "loramix":
            peak = results[run.key]["peak_extra"]
            lines.append(
                check(
                    f"memory loramix {run.method}: peak above inputs, MB",
                    peak / 2**20,
                    f"≤ {mb(target_bytes)} MB",
                    peak <= target_bytes,
                )
            )
    return lines


def report(args, modules, results: dict) -> str:
    largest = max(out * inp for _, out, inp in modules)
    target = 2 * factor_bytes(modules) + 4 * largest
    parts = [
        *machine_lines(args, modules),
        "",
        "## Summary (one fresh process per row)",
        "",
        *summary_table(results, modules, target),
        "",
        "## Ratios and targets",
        "",
        *ratio_lines(results, target),
        "",
        "## Wall time per module, seconds (PEFT cat: only the total is timed)",
        "",
        *module_time_table(results, modules),
        "",
        "## Truncation errors per module (rank 64)",
        "",
        *module_error_table(results, modules),
        "",
        "Notes: PEFT runs `add_weighted_adapter` with its defaults (`svd_full_matrices=True`); its total includes "
        "injecting the new adapter; its adapters do not require grad (as when loaded for inference). "
        "'Other processes' CPU' is the share of the machine's CPU time used by other processes during the "
        "timed merge (from /proc/stat): above a few percent, that row's time is inflated. Peak memory is `ru_maxrss` after the high-water mark is reset once inputs "
        "are built, minus the RSS at that point"
        + (
            " (cold: no rehearsal merge first, so the libraries' one-time code and workspaces are included)"
            if args.cold
            else " (each worker first rehearses the same tool and method on two small modules, so the libraries' one-time code and workspaces are excluded)"
        )
        + ("" if all(r["peak_reset"] for r in results.values()) else " (**reset failed in some workers**)")
        + ". PEFT's dare_ties_svd error is against its own full-rank result replayed from the recorded RNG state.",
    ]
    return "\n".join(parts) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Benchmark loramix merges against PEFT's add_weighted_adapter.")
    p.add_argument("--layers", type=int, default=1, help="number of Llama-2-7B blocks (default 1)")
    p.add_argument("--targets", default=",".join(SHAPES), help="comma list of modules (default all seven)")
    p.add_argument("--quick", action="store_true", help=f"one layer, {QUICK_TARGETS} only")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (default: cores)")
    p.add_argument("--out", type=Path, default=RESULTS, help="markdown file for the results")
    p.add_argument(
        "--cold",
        action="store_true",
        help="no rehearsal merge before measuring: peaks then include the libraries' one-time code and workspace",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.layers, args.targets = 1, QUICK_TARGETS
    unknown = [t for t in args.targets.split(",") if t not in SHAPES]
    if unknown:
        p.error(f"unknown targets {unknown}; choose from {list(SHAPES)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    modules = module_list(args.layers, args.targets.split(","))
    if args.worker:
        print(json.dumps(worker(args.worker, modules, args.threads, rehearsal=not args.cold)))
        return
    command = shlex.join(["python", "bench/merge_speed.py", *(sys.argv[1:] if argv is None else argv)])
    results = {}
    for run in RUNS:
        print(f"running {run.key} ...", file=sys.stderr, flush=True)
        results[run.key] = spawn(run.key, args)
    text = report(args, modules, results)
    print(text)
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# merge_speed results\n\nCommand: `{command}`\n\nDate: {stamp}\n\n{text}")


if __name__ == "__main__":
    main()
