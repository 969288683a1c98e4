"""Training-step speed and memory of `loramix fit-cat` (LoRA Soups' CAT) against the same step done
PEFT's way, and against a forward+backward of the frozen base alone.

Usage (from the repository root, in the project's virtualenv):

    python bench/fit_cat_speed.py --quick          # tiny model, k=2 (debugging)
    python bench/fit_cat_speed.py                  # hidden 1024, 4 layers, k = 2, 3, 4
    python bench/fit_cat_speed.py --k 2 --layers 8 --batch 4 --seq 256

A random float32 Llama is built in code (seed 0), and k random rank-32 LoRAs (alpha 64) on all
seven projections, A ~ N(0, 1/in), B ~ N(0, 0.01²), are written by PEFT into a temporary folder, so
every variant loads the same weights. A step, on one fixed random token batch (labels = input_ids):
forward, backward, gradient clipping, AdamW, zero_grad, as in loramix's training loop. Variants:

- fit-cat: `loramix.soup.layer.wrap(model, adapters, "layer", "free", 1.0)`; α (layers, k) trains;
- peft: `PeftModel.from_pretrained` + `load_adapter`, all k active (`base_model.set_adapter`),
  LoRA weights frozen, and a trainable (layers, k) scale applied by a forward hook on each
  adapter's `lora_A` output (r values per token, the cheapest place; `--peft-scale-on lora_B`);
- base: the bare model training only block 0's post-attention RMSNorm weight, so the backward
  runs through every block but block 0's attention (input gradients only). fit-cat must also
  backpropagate block 0's attention, so the overhead fit-cat / base is, if anything, overstated.

Each (variant, k) runs in a fresh subprocess (this script with a hidden `--worker` flag) importing
the same libraries. In the first round each saves its logits on the batch: fit-cat and PEFT (all
scales 1) must be allclose. Each checks that its first step gives every trainable tensor a finite
gradient, then times `--warmup` + `--repeats` steps; its peak memory is `ru_maxrss` after the
high-water mark is reset once set up (after gc and malloc_trim), shown as is and above the RSS
after setup. `--rounds` rounds alternate the order against drift; times are medians over all timed
steps of all rounds, memory the highest round, and every ratio comes from this run. Results are
printed and written to bench/results/fit_cat_speed.md with the command line, date, machine,
versions and git commit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from importlib.metadata import version
from pathlib import Path

from procstats import busy_seconds, other_load, reset_peak_rss, rss_bytes  # bench/procstats.py

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BASE_NAME = "bench/fit-cat-speed-llama"
B_STD = 0.01  # trained LoRA B factors are small but non-zero
SEED, LR = 0, 1e-2  # LR: fit-cat's default
SPEEDUP_MIN, MEMORY_MAX, OVERHEAD_MAX = 1.3, 1.0, 1.25  # the targets, at k=2
QUICK = {
    "hidden": 128,
    "intermediate": 352,
    "layers": 2,
    "heads": 4,
    "vocab": 512,
    "batch": 2,
    "seq": 32,
    "repeats": 3,
    "warmup": 1,
    "rounds": 1,
}
RESULTS = Path(__file__).resolve().parent / "results" / "fit_cat_speed.md"
INT_OPTIONS = {  # name: (default, help); all but rounds are passed on to the workers
    "hidden": (1024, "hidden size"),
    "intermediate": (2816, "MLP size"),
    "layers": (4, "decoder blocks"),
    "heads": (16, "attention heads"),
    "vocab": (8192, "vocabulary size"),
    "rank": (32, "LoRA rank; alpha is twice it"),
    "batch": (2, "sequences per step"),
    "seq": (128, "tokens per sequence"),
    "warmup": (2, "untimed steps per worker"),
    "repeats": (4, "timed steps per worker"),
    "rounds": (2, "workers per variant, order alternating"),
}


# ---------------------------------------------------------------- model, batch and adapters


def build_model(args):
    """The benchmark's Llama: random float32 weights, seed fixed, train mode (no dropout in Llama)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=max(args.seq, 128),
    )
    torch.manual_seed(SEED)
    return LlamaForCausalLM(config).float().train()


def token_batch(args):
    import torch

    return torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(SEED + 1))


def fill_lora(peft_model, names: list[str]) -> None:
    """A ~ N(0, 1/in), B ~ N(0, B_STD²), seeded by adapter and module."""
    import torch
    from peft.tuners.lora import LoraLayer

    for path, layer in peft_model.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        for name in names:
            g = torch.Generator().manual_seed(zlib.crc32(f"{name}:{path}".encode()))
            A, B = layer.lora_A[name].weight.data, layer.lora_B[name].weight.data
            A.normal_(0.0, A.shape[1] ** -0.5, generator=g)
            B.normal_(0.0, B_STD, generator=g)


def write_adapters(args, folder: Path, k: int) -> None:
    """k PEFT adapter folders folder/a0 ... folder/a{k-1}, written by PEFT itself."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=args.rank, lora_alpha=2 * args.rank, target_modules=TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM"
    )
    names = [f"a{i}" for i in range(k)]
    base = build_model(args)
    base.name_or_path = BASE_NAME  # recorded in the adapters: loramix refuses adapters with no base
    model = get_peft_model(base, config, adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, config)
    fill_lora(model, names)
    model.save_pretrained(folder)


# ---------------------------------------------------------------- the three variants


def setup_base(args, folder: Path, k: int):
    model = build_model(args).requires_grad_(False)
    model.model.layers[0].post_attention_layernorm.weight.requires_grad_(True)
    return model


def setup_cat(args, folder: Path, k: int):
    from loramix.core.adapters import read_adapter
    from loramix.soup import layer

    model = build_model(args)
    adapters = [read_adapter(folder / f"a{i}") for i in range(k)]
    layer.wrap(model, adapters, granularity="layer", param="free", init=1.0)
    return model.train()  # `adapters` is dropped here: the CatLinears hold the concatenated copies


def setup_peft(args, folder: Path, k: int):
    import torch
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    names = [f"a{i}" for i in range(k)]
    model = PeftModel.from_pretrained(build_model(args), folder / names[0], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(folder / name, adapter_name=name)
    model.base_model.set_adapter(names, inference_mode=True)
    model.requires_grad_(False)
    scales = torch.nn.Parameter(torch.ones(args.layers, k))
    model.base_model.model.bench_scales = scales  # registered, so it is the model's one trainable tensor
    for path, layer in model.named_modules():
        if isinstance(layer, LoraLayer):
            block = int(re.search(r"\.layers\.(\d+)\.", path).group(1))
            for i, name in enumerate(names):
                where = layer.lora_A[name] if args.peft_scale_on == "lora_A" else layer.lora_B[name]
                where.register_forward_hook(lambda _m, _in, out, b=block, i=i: out * scales[b, i])
    assert list(model.active_adapters) == names, model.active_adapters
    return model.train()


SETUPS = {"base": setup_base, "cat": setup_cat, "peft": setup_peft}


# ---------------------------------------------------------------- the step


def train_step(model, ids, params, optimizer, check: bool = False) -> float:
    import torch

    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    if check:
        bad = [tuple(p.shape) for p in params if p.grad is None or not torch.isfinite(p.grad).all()]
        assert not bad, f"trainable tensors without a finite gradient: {bad}"
        assert any(p.grad.abs().sum() > 0 for p in params), "all gradients are zero"
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def timed_steps(model, ids, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of `repeats` steps after `warmup` untimed ones (the first step is checked)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    times = []
    for step in range(warmup + repeats):
        t0 = time.perf_counter()
        train_step(model, ids, params, optimizer, check=step == 0)
        if ids.is_cuda:
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    return times


# ---------------------------------------------------------------- memory and load of one process


def settle_and_reset_peak() -> bool:
    """Free what setup left behind (gc, malloc_trim), then reset the RSS high-water mark."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return reset_peak_rss()


# ---------------------------------------------------------------- the worker (one fresh process per run)


def worker(args) -> dict:
    import importlib
    import resource

    import torch

    for name in ("peft", "loramix.soup.layer"):  # every variant imports the same libraries, so their RSS is alike
        importlib.import_module(name)

    torch.set_num_threads(args.threads)
    variant, _, k = args.worker.partition(":")
    model = SETUPS[variant](args, args.dir, int(k or 0)).to(args.device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ids = token_batch(args).to(args.device)
    if args.save_logits:
        with torch.no_grad():
            torch.save(model(input_ids=ids, use_cache=False).logits.cpu(), args.dir / f"logits-{args.worker}.pt")
    reset = settle_and_reset_peak()
    cuda = args.device.startswith("cuda")
    if cuda:  # on a GPU, "RSS" and "peak" are the GPU memory allocated by torch
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = torch.cuda.memory_allocated() if cuda else rss_bytes()
    busy0, t0 = busy_seconds(), time.perf_counter()
    times = timed_steps(model, ids, args.warmup, args.repeats)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    load = other_load(busy0, busy_seconds(), time.perf_counter() - t0)
    return {
        "key": args.worker,
        "times": times,
        "rss_setup": rss0,
        "peak": peak,
        "peak_reset": reset,
        "trainable": trainable,
        "other_load": load,
        "threads": torch.get_num_threads(),
        "attn": model.config._attn_implementation,
    }


# ---------------------------------------------------------------- orchestration


def spawn(key: str, args, folder: Path, save_logits: bool) -> dict:
    """Run one variant in a fresh interpreter and return its JSON result."""
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        key,
        "--dir",
        str(folder),
        "--threads",
        str(args.threads),
        "--peft-scale-on",
        args.peft_scale_on,
        "--device",
        args.device,
    ]
    for name in [n for n in INT_OPTIONS if n != "rounds"]:
        cmd += [f"--{name}", str(getattr(args, name))]
    proc = subprocess.run(cmd + (["--save-logits"] if save_logits else []), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"worker {key} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_all(args, ks: list[int], folder: Path) -> dict[str, list[dict]]:
    """{key: [result per round]}; the order is reversed every other round."""
    keys = ["base"] + [f"{v}:{k}" for k in ks for v in ("cat", "peft")]
    results: dict[str, list[dict]] = {key: [] for key in keys}
    for r in range(args.rounds):
        for key in keys if r % 2 == 0 else keys[::-1]:
            print(f"round {r + 1}/{args.rounds}: {key} ...", file=sys.stderr, flush=True)
            results[key].append(spawn(key, args, folder, save_logits=r == 0))
    return results


def logit_check(folder: Path, k: int) -> dict:
    """fit-cat against PEFT (all scales 1) and fit-cat against the bare base, on the same batch."""
    import torch

    c, p, b = (torch.load(folder / f"logits-{key}.pt") for key in (f"cat:{k}", f"peft:{k}", "base"))
    return {
        "allclose": bool(torch.allclose(c, p, rtol=1e-4, atol=1e-5)),
        "cat_peft": float((c - p).abs().max()),
        "cat_base": float((c - b).abs().max()),
    }


def summarize(runs: list[dict]) -> dict:
    """Median ms over all timed steps of all rounds; highest memory of the rounds."""
    ms = [1000 * t for run in runs for t in run["times"]]
    return {
        "ms": statistics.median(ms),
        "peak": max(r["peak"] for r in runs),
        "extra": max(r["peak"] - r["rss_setup"] for r in runs),
        "reset": all(r["peak_reset"] for r in runs),
    }


# ---------------------------------------------------------------- report


def mb(n: float) -> str:
    return f"{n / 2**20:.0f}"


def code_state() -> str:
    """The commit measured, and loramix files that differ from it in the working tree."""

    def git(*cmd):
        out = subprocess.run(["git", *cmd], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        return out.stdout.rstrip() if out.returncode == 0 else "?"

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "loramix").splitlines() if line.strip()]
    return f"git commit {git('rev-parse', '--short', 'HEAD')}" + (f" (modified: {', '.join(dirty)})" if dirty else "")


def header_lines(args, ks: list[int], attn: str) -> list[str]:
    with open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "?")
    return [
        f"- machine: nproc={os.cpu_count()}, {cpu}, python {platform.python_version()}, torch {version('torch')}, "
        f"transformers {version('transformers')}, peft {version('peft')}, torch threads {args.threads}; {code_state()}",
        f"- device: {args.device}"
        + (
            f" ({__import__('torch').cuda.get_device_name()}; memory columns are torch's peak GPU allocation)"
            if args.device.startswith("cuda")
            else ""
        ),
        f"- model: random float32 Llama, hidden {args.hidden}, {args.layers} layers, intermediate {args.intermediate}, "
        f"{args.heads} heads, vocab {args.vocab}, attention {attn}; batch {args.batch} × {args.seq} tokens",
        f"- adapters: k = {', '.join(map(str, ks))}, rank {args.rank}, alpha {2 * args.rank}, on {', '.join(TARGETS)}; "
        f"PEFT's trainable scales hooked on {args.peft_scale_on}",
        f"- timing: {args.warmup} warm-up + {args.repeats} timed steps per worker, {args.rounds} round(s)",
    ]


def main_table(s: dict, ks: list[int], checks: dict) -> list[str]:
    b = s["base"]
    lines = [
        "| k | fit-cat ms/step | PEFT ms/step | speedup PEFT/fit-cat | base fwd+bwd ms/step | overhead fit-cat/base "
        "| fit-cat peak MB | PEFT peak MB | peak ratio fit-cat/PEFT | above setup, fit-cat / PEFT MB "
        "| logits fit-cat vs PEFT, max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k in ks:
        c, p = s[f"cat:{k}"], s[f"peft:{k}"]
        lines.append(
            f"| {k} | {c['ms']:.1f} | {p['ms']:.1f} | {p['ms'] / c['ms']:.3f} | {b['ms']:.1f} | "
            f"{c['ms'] / b['ms']:.3f} | {mb(c['peak'])} | {mb(p['peak'])} | {c['peak'] / p['peak']:.3f} | "
            f"{mb(c['extra'])} / {mb(p['extra'])} | {checks[k]['cat_peft']:.1e} |"
        )
    return lines


def worker_table(results: dict) -> list[str]:
    lines = [
        "| variant | round | trainable | timed steps, ms | RSS after setup MB | peak MB | other processes' CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, runs in results.items():
        for i, r in enumerate(runs):
            steps = ", ".join(f"{1000 * t:.1f}" for t in r["times"])
            lines.append(
                f"| {key} | {i + 1} | {r['trainable']} | {steps} | {mb(r['rss_setup'])} | {mb(r['peak'])} | "
                + ("- |" if r["other_load"] is None else f"{100 * r['other_load']:.0f}% |")
            )
    return lines


def verdict_lines(s: dict, ks: list[int], checks: dict) -> list[str]:
    if 2 not in ks:
        return ["- targets are for k=2, which was not measured"]
    c, p, b = s["cat:2"], s["peft:2"], s["base"]
    rows = [
        ("speedup PEFT / fit-cat at k=2", p["ms"] / c["ms"], f">= {SPEEDUP_MIN}", p["ms"] / c["ms"] >= SPEEDUP_MIN),
        (
            "peak RSS fit-cat / PEFT at k=2",
            c["peak"] / p["peak"],
            f"<= {MEMORY_MAX}",
            c["peak"] / p["peak"] <= MEMORY_MAX,
        ),
        (
            "overhead fit-cat / base fwd+bwd at k=2",
            c["ms"] / b["ms"],
            f"< {OVERHEAD_MAX}",
            c["ms"] / b["ms"] < OVERHEAD_MAX,
        ),
    ]
    lines = [
        f"- {label}: {value:.3f} (target {target}) — {'PASS' if ok else 'FAIL'}" for label, value, target, ok in rows
    ]
    lines.append(f"- (info) peak above setup fit-cat / PEFT at k=2: {c['extra'] / max(p['extra'], 1):.3f}")
    lines.append(
        f"- fit-cat and PEFT logits allclose at every k: {'yes' if all(x['allclose'] for x in checks.values()) else 'NO'}"
        f"; the adapters do change them: max abs diff fit-cat vs base "
        + ", ".join(f"{x['cat_base']:.2f} (k={k})" for k, x in checks.items())
    )
    return lines


def report(args, ks: list[int], results: dict, checks: dict) -> str:
    s = {key: summarize(runs) for key, runs in results.items()}
    notes = (
        "Notes: times are medians over all timed steps of all rounds (each listed under 'Per worker'); "
        "peak memory is the highest round's. Peak RSS is `ru_maxrss` after the high-water mark was reset once the model was "
        "set up"
        + (
            ""
            if all(r["reset"] for r in s.values())
            else " (**reset failed in some workers**: peaks may include setup)"
        )
        + "; 'other processes' CPU' is the highest share of the machine's CPU "
        "used by other processes during a worker's steps: above a few percent, times are inflated."
    )
    return (
        "\n".join(
            [
                *header_lines(args, ks, results["base"][0]["attn"]),
                "",
                "## Results",
                "",
                *main_table(s, ks, checks),
                "",
                "## Targets",
                "",
                *verdict_lines(s, ks, checks),
                "",
                "## Per worker",
                "",
                *worker_table(results),
                "",
                notes,
            ]
        )
        + "\n"
    )


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Benchmark one fit-cat training step against PEFT's and the bare base's.")
    for name, (default, text) in INT_OPTIONS.items():
        p.add_argument(f"--{name}", type=int, default=default, help=f"{text} (default {default})")
    p.add_argument("--k", help="comma list of adapter counts (default 2,3,4; with --quick 2)")
    p.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0))),
        help="torch threads (default: $OMP_NUM_THREADS, else all cores)",
    )
    p.add_argument(
        "--peft-scale-on",
        choices=("lora_A", "lora_B"),
        default="lora_A",
        help="where PEFT's trainable scale multiplies (default lora_A: r values per token)",
    )
    p.add_argument("--quick", action="store_true", help="tiny model, one round (debugging); other options still apply")
    p.add_argument("--device", default="cpu", help="cpu, or cuda / cuda:N (then memory is torch's peak GPU allocation)")
    p.add_argument("--out", type=Path, default=RESULTS, help="markdown file for the results")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--save-logits", action="store_true", help=argparse.SUPPRESS)
    if p.parse_args(argv).quick:  # --quick changes the defaults; options given explicitly still win
        p.set_defaults(**QUICK)
    args = p.parse_args(argv)
    args.k = args.k or ("2" if args.quick else "2,3,4")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    ks = sorted({int(k) for k in args.k.split(",")})
    command = shlex.join(["python", "bench/fit_cat_speed.py", *(sys.argv[1:] if argv is None else argv)])
    with tempfile.TemporaryDirectory(prefix="fit-cat-speed-") as tmp:
        write_adapters(args, Path(tmp), max(ks))
        results = run_all(args, ks, Path(tmp))
        checks = {k: logit_check(Path(tmp), k) for k in ks}
    text = report(args, ks, results, checks)
    print(text)
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    args.out.write_text(f"# fit_cat_speed results\n\nCommand: `{env}{command}`\n\nDate: {stamp}\n\n{text}")


if __name__ == "__main__":
    main()
