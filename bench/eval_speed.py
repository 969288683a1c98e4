"""Generation speed of `loramix eval` against one prompt at a time through transformers' generate().

Usage (from the repository root, in the project's virtualenv):

    python bench/eval_speed.py                 # 256 prompts, batch sizes 8, 32, 64
    python bench/eval_speed.py --prompts 64 --batch-sizes 32 --repeats 1

The bundled loramix-tiny (float32, CPU, one thread per core) writes greedy completions for the
first N prompts of builtin:math-code:eval (a word problem; the completion is a program), two ways
in this one process, alternating `--repeats` times:

- naive: for each prompt, `model.generate(input_ids=[prompt], max_new_tokens, do_sample=False)`
  with the same newline stop (one StopStringCriteria, built once), the text cut before it;
- loramix: `loramix.evaluate.generation.generate` as `eval` runs it: prompts sorted by length, left-padded
  batches with the KV cache, the newline as a stop string that ends a row early.

Both must give the same text and the same number of tokens (checked). Throughput is the tokens
generated (up to and with the stop) per second of wall time, best of the repeats; ratios are
loramix over naive. Results are printed and written to bench/results/eval_speed.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "eval_speed.md"


def naive(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> tuple[list[str], int]:
    """One generate() call per prompt, stopping at a newline; (texts cut there, tokens generated)."""
    import torch

    from loramix.evaluate.generation import stop_criteria

    criteria, texts, tokens = stop_criteria(tokenizer, ("\n",)), [], 0
    for p in prompts:
        with torch.no_grad():
            out = model.generate(
                input_ids=torch.tensor([p], device=model.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                stopping_criteria=criteria,
            )
        new = out[0, len(p) :].tolist()
        if tokenizer.eos_token_id in new:
            new = new[: new.index(tokenizer.eos_token_id)]
        tokens += len(new)
        texts.append(tokenizer.decode(new, skip_special_tokens=True).split("\n")[0])
    return texts, tokens


def batched(model, tokenizer, prompts, max_new_tokens: int, batch_size: int) -> tuple[list[str], int]:
    from loramix.evaluate import generation

    out = generation.generate(model, tokenizer, prompts, max_new_tokens, batch_size, stops=("\n",))
    return [g.text for g in out], sum(g.tokens for g in out)


def timed(fn, *args):
    began = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - began


def measure(args) -> dict:
    import torch

    from loramix.core import data, models
    from loramix.evaluate import generation

    threads = models.set_threads(args.threads)
    path = models.bundled_path()
    device = models.pick_device(args.device)
    model, tokenizer = models.load_model(path, torch.float32, device).eval(), models.load_tokenizer(path)
    rows = data.load("builtin:math-code:eval", args.prompts).rows
    prompts = generation.prompt_ids(rows, tokenizer)
    best = {}
    for _ in range(args.repeats):
        (texts, tokens), seconds = timed(naive, model, tokenizer, prompts, args.max_new_tokens)
        best["naive"] = min(best.get("naive", (tokens, seconds)), (tokens, seconds), key=lambda t: t[1])
        for b in args.batch_sizes:
            (got, n), s = timed(batched, model, tokenizer, prompts, args.max_new_tokens, b)
            if got != texts or n != tokens:
                wrong = sum(x != y for x, y in zip(got, texts))
                raise SystemExit(
                    f"batch size {b}: {wrong} of {len(texts)} completions differ from the naive loop "
                    f"({n} tokens against {tokens})"
                )
            best[b] = min(best.get(b, (n, s)), (n, s), key=lambda t: t[1])
    return {"threads": threads, "best": best, "prompt_tokens": sum(map(len, prompts)), "device": device_name(device)}


def device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "CPU"


def table(args, result: dict) -> list[str]:
    tokens, seconds = result["best"]["naive"]
    base_rate = tokens / seconds
    lines = [
        "| way | batch size | tokens | seconds | tokens/s | × naive |",
        "|---|---|---|---|---|---|",
        f"| naive generate() | 1 | {tokens} | {seconds:.2f} | {base_rate:,.0f} | 1.00 |",
    ]
    for b in args.batch_sizes:
        n, s = result["best"][b]
        lines.append(f"| loramix eval | {b} | {n} | {s:.2f} | {n / s:,.0f} | {n / s / base_rate:.2f} |")
    return lines


def header(args, result: dict) -> list[str]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    command = "python bench/eval_speed.py" + "".join(" " + shlex.quote(a) for a in sys.argv[1:])
    return [
        "# eval_speed results",
        "",
        f"Command: `{command}`",
        "",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"- machine: nproc={os.cpu_count()}, {platform.processor() or platform.machine()}, python "
        f"{platform.python_version()}, torch {version('torch')}, transformers {version('transformers')}, "
        f"torch threads {result['threads']}; git commit {commit or '?'}",
        f"- model: loramix-tiny (float32, {result['device']}); {args.prompts} prompts of builtin:math-code:eval "
        f"({result['prompt_tokens']} prompt tokens), greedy, at most {args.max_new_tokens} new tokens, stop at a "
        f"newline; best of {args.repeats}; every completion identical both ways",
    ]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="eval's batched generation against one generate() call per prompt.")
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[8, 32, 64])
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    result = measure(args)
    text = "\n".join(header(args, result) + ["", *table(args, result)]) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
