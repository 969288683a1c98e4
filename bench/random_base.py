"""Write a random-weight Llama with the bundled tokenizer: a base with real model shapes where
nothing can be downloaded (bench/gpu.sh trains, fits and scores on one with 7B layer shapes).

Usage: python bench/random_base.py OUT [--hidden 4096 --intermediate 11008 --heads 32 --layers 2]
The vocabulary is the bundled tokenizer's (1024), so every built-in data set tokenizes; weights are
N(0, 0.02²) with seed 0, saved in bfloat16. What it learns is meaningless; its speed and memory are
those of the shapes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def write_base(out: Path, hidden: int, intermediate: int, heads: int, layers: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from loramix.core.models import bundled_path

    tokenizer_files = [p for p in bundled_path().iterdir() if p.name.startswith(("tokenizer", "special_tokens"))]
    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        num_hidden_layers=layers,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for p in tokenizer_files:
        shutil.copy(p, out / p.name)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=11008)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    a = p.parse_args(argv)
    write_base(a.out, a.hidden, a.intermediate, a.heads, a.layers)
    print(a.out)


if __name__ == "__main__":
    main()
