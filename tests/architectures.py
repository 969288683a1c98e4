"""Tiny random models of the families loramix must handle, built in code from their transformers
configs (2 layers, vocab 1024) and saved like any local model, with the bundled model's tokenizer
(whose vocabulary they share) so that every command runs on them offline."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
IDS = dict(vocab_size=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2)
ATTENTION = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2)

# family -> (config class name, its arguments); each model has 2 blocks
FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", ATTENTION),
    "mistral": ("MistralConfig", ATTENTION),
    "qwen2": ("Qwen2Config", ATTENTION),
    "qwen3": ("Qwen3Config", dict(ATTENTION, head_dim=16)),
    "gemma2": ("Gemma2Config", dict(ATTENTION, head_dim=16)),
    "gemma3": ("Gemma3TextConfig", dict(ATTENTION, head_dim=16)),
    "phi3": ("Phi3Config", dict(ATTENTION, num_key_value_heads=4)),  # fused qkv_proj, gate_up_proj
    "gpt_neox": ("GPTNeoXConfig", dict(hidden_size=64, intermediate_size=96, num_attention_heads=4)),
    "gpt2": ("GPT2Config", dict(n_embd=64, n_head=4, n_positions=128)),  # Conv1D
    "opt": ("OPTConfig", dict(hidden_size=64, ffn_dim=96, num_attention_heads=4, word_embed_proj_dim=64)),
    "falcon": ("FalconConfig", dict(hidden_size=64, num_attention_heads=4, new_decoder_architecture=False)),
    "mixtral": ("MixtralConfig", dict(ATTENTION, num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        dict(
            ATTENTION,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=64,
            num_experts=4,
            num_experts_per_tok=2,
        ),
    ),
    "llama_tied": ("LlamaConfig", dict(ATTENTION, tie_word_embeddings=True)),
}


def config(family: str):
    import transformers

    name, kwargs = FAMILIES[family]
    layers = {"n_layer": 2} if family == "gpt2" else {"num_hidden_layers": 2}
    return getattr(transformers, name)(**IDS, **layers, **kwargs)


def tiny_model(family: str, folder: Path, seed: int = 0) -> Path:
    """Save a random model of `family` with the bundled tokenizer into `folder`."""
    from transformers import AutoModelForCausalLM

    from loramix.core.models import bundled_path

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config(family))
    model.save_pretrained(folder, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(bundled_path() / name, folder / name)
    return folder


COMMANDS = ("train-skill", "train-skill 4-bit", "fit-cat", "merge", "merge --into-base", "eval", "inspect")
TRAIN = [
    "--limit",
    "32",
    "--batch-size",
    "8",
    "--max-steps",
    "2",
    "--rank",
    "4",
    "--threads",
    "1",
    "--val-fraction",
    "0",
]


def run(args: list) -> tuple[int, str]:
    from typer.testing import CliRunner

    from loramix.cli.app import app

    result = CliRunner(env={"COLUMNS": "1000"}).invoke(app, [str(a) for a in args])
    lines = [line for line in result.stderr.splitlines() if line.startswith("error")]
    return result.exit_code, lines[0] if lines else (result.stderr.strip().splitlines() or [""])[-1]


def probe(family: str, root: Path) -> dict[str, str]:
    """One outcome per command: "ok", or the error it ended with."""
    from loramix.merge.names import MethodName

    base = tiny_model(family, root / "base")
    out: dict[str, str] = {}

    def step(name: str, args: list) -> bool:
        code, message = run(args)
        out[name] = "ok" if code == 0 else f"exit {code}: {message.replace(str(root), '…')}"
        return code == 0

    a, b = root / "a", root / "b"
    ok = step("train-skill", ["train-skill", "builtin:math", "-o", a, "--base", base, *TRAIN])
    ok = ok and step("train-skill", ["train-skill", "builtin:code", "-o", b, "--base", base, *TRAIN, "--seed", "1"])
    step(
        "train-skill 4-bit", ["train-skill", "builtin:math", "-o", root / "q", "--base", base, *TRAIN, "--load-in-4bit"]
    )
    if not ok:
        return out
    step(
        "fit-cat",
        [
            "fit-cat",
            a,
            b,
            "-d",
            "builtin:math",
            "-d",
            "builtin:code",
            "--fraction",
            "0.01",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--threads",
            "1",
            "-o",
            root / "cat",
        ],
    )
    failed = [
        m.value for m in MethodName if not step("merge", ["merge", a, b, "-m", m.value, "-o", root / f"m-{m.value}"])
    ]
    out["merge"] = "ok" if not failed else f"failed: {', '.join(failed)}"
    step("merge --into-base", ["merge", a, b, "-m", "ties", "--into-base", base, "-o", root / "full"])
    step(
        "eval",
        [
            "eval",
            "-d",
            "builtin:math",
            "--limit",
            "4",
            "-a",
            a,
            "-a",
            root / "m-linear",
            "--max-new-tokens",
            "4",
            "--threads",
            "1",
        ],
    )
    step("inspect", ["inspect", a, b, "--json"])
    return out


# where a command is refused on purpose, the start of its message
EXPECTED = {("falcon", "train-skill 4-bit"): "exit 2: error: "}


def expected(family: str, command: str, outcome: str) -> bool:
    refusal = EXPECTED.get((family, command))
    return outcome.startswith(refusal) if refusal else outcome == "ok"
