"""Rebuild loramix-tiny from scratch: `python -m loramix.train.pretrain [--out DIR]`.

Trains a byte-level BPE tokenizer and a small Llama on the synthetic corpus (loramix/zoo/corpus.py), all from
one seed, and writes safetensors (bfloat16), the tokenizer and `pretrain.json` (seed, steps, time,
final losses). Deterministic for a given seed, step count and thread count; about 24 minutes on 2
CPU cores with the defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from loramix.core import log

SPECIAL = ("<pad>", "<s>", "</s>")
# the tokenizer class written to tokenizer_config.json: transformers 5 saves "TokenizersBackend",
# which transformers 4 (and so llama.cpp's converter, which pins 4.57) cannot load;
# "PreTrainedTokenizerFast" is the same class in 5 and loads from tokenizer.json in 4
TOKENIZER_CLASS = "PreTrainedTokenizerFast"
SHAPE: dict[str, Any] = dict(
    vocab_size=1024,
    hidden_size=288,
    num_hidden_layers=8,
    num_attention_heads=6,
    num_key_value_heads=6,
    intermediate_size=768,
    max_position_embeddings=512,
)


def build_tokenizer(seed: int, n_docs: int = 30000):
    """A byte-level BPE over the corpus with single-digit number tokens (decode(encode(t)) == t)."""
    import itertools

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from loramix.zoo.corpus import documents

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=SHAPE["vocab_size"],
        special_tokens=list(SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(itertools.islice(documents(seed + 1), n_docs), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=SHAPE["max_position_embeddings"],
    )


def batches(tokenizer, seed: int, batch: int, length: int):
    """Packed (batch, length) blocks of documents separated by </s>, endlessly."""
    import torch

    from loramix.zoo.corpus import documents

    buffer: list[int] = []
    for doc in documents(seed):
        buffer += tokenizer(doc, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        if len(buffer) >= batch * length:
            yield torch.tensor(buffer[: batch * length]).view(batch, length)
            buffer = buffer[batch * length :]


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def held_out_loss(model, tokenizer, seed: int, n: int = 8) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        it = batches(tokenizer, seed + 1000, 16, 128)
        losses = [model(input_ids=(x := next(it)), labels=x).loss.item() for _ in range(n)]
    model.train()
    return sum(losses) / len(losses)


def pretrain(
    out: Path, seed: int, steps: int, batch: int, length: int, lr: float, threads: int, tokenizer_docs: int = 30000
) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(seed, tokenizer_docs)
    config = LlamaConfig(**SHAPE, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    start, curve, data = time.time(), [], batches(tokenizer, seed, batch, length)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, lr, warmup=max(1, steps // 20))
        x = next(data)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        curve.append(round(loss.item(), 4))
        if step % 50 == 0 or step == steps - 1:
            log.note(f"step {step + 1}/{steps} loss {loss.item():.4f} {time.time() - start:.0f}s")
    record = {
        "seed": seed,
        "steps": steps,
        "batch": batch,
        "length": length,
        "lr": lr,
        "threads": threads,
        "tokens": steps * batch * length,
        "seconds": round(time.time() - start, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_train_loss": round(sum(curve[-20:]) / len(curve[-20:]), 4),
        "held_out_loss": round(held_out_loss(model, tokenizer, seed), 4),
        "loss_every_50_steps": curve[::50],
        "rebuild": f"python -m loramix.train.pretrain --seed {seed} --steps {steps} --threads {threads}",
    }
    from loramix.core.outputs import atomic_dir

    with atomic_dir(out, force=True) as tmp:  # a failed save leaves the old model in place
        model.to(torch.bfloat16).save_pretrained(tmp)  # type: ignore[arg-type]  # to() takes a dtype too
        save_tokenizer(tokenizer, tmp)
        (tmp / "pretrain.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def save_tokenizer(tokenizer, folder: Path) -> None:
    """Save the tokenizer so that transformers 4 and 5 both load it (see TOKENIZER_CLASS)."""
    tokenizer.save_pretrained(folder)
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = TOKENIZER_CLASS
    path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from loramix.core.models import bundled_path

    p.add_argument("--out", type=Path, default=bundled_path())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1800)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the steps, on stderr
    record = pretrain(a.out, a.seed, a.steps, a.batch, a.length, a.lr, a.threads)
    print(json.dumps({k: v for k, v in record.items() if k != "loss_every_50_steps"}, indent=1))


if __name__ == "__main__":
    main()
