"""`loramix export-gguf`: llama.cpp's LoRA GGUF read back with the gguf package (metadata, names,
shapes, dtypes, and every delta B·A equal to the adapter's scaled one once llama.cpp's q/k row
order is undone), the refusals (exit 2, one message, nothing written), the bundled tokenizer's
class, and, where llama-cpp-python is installed, llama.cpp's logits against PEFT's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from loramix.cli.app import app
from loramix.core.adapters import read_adapter
from loramix.core.models import bundled_path
from loramix.export.layout import BLOCK_TENSORS, rope_order
from tests.helpers import TARGETS, make_adapter, tiny_llama

runner = CliRunner()
HEADS, KV_HEADS = 4, 2  # tests.helpers.tiny_llama


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    return "".join(text.split())


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("gguf-base"))


@pytest.fixture(scope="module")
def mixed(base, tmp_path_factory) -> Path:
    """Per-module ranks and alphas and rsLoRA: every scale differs, so folding them is tested."""
    return make_adapter(
        base,
        tmp_path_factory.mktemp("gguf-adapters") / "mixed",
        r=4,
        alpha=8,
        seed=3,
        use_rslora=True,
        rank_pattern={"q_proj": 6, "down_proj": 2},
        alpha_pattern={"k_proj": 3},
    )


def read_gguf(path: Path) -> tuple[dict, dict]:
    """(metadata key -> value, tensor name -> reader tensor)."""
    reader = gguf.GGUFReader(path)
    fields = {f.name: f.contents() for f in reader.fields.values() if not f.name.startswith("GGUF.")}
    return fields, {t.name: t for t in reader.tensors}


def gguf_delta(tensors: dict, tensor: str, alpha: float, heads: int | None) -> np.ndarray:
    """The delta llama.cpp applies to `tensor` (alpha / rank · B·A), back in transformers' row order."""
    A = np.asarray(tensors[tensor + ".lora_a"].data, dtype=np.float64)
    B = np.asarray(tensors[tensor + ".lora_b"].data, dtype=np.float64)
    delta = alpha / B.shape[1] * B @ A
    if heads is not None:
        delta = delta[np.argsort(rope_order(delta.shape[0], heads))]
    return delta


# --- the file --------------------------------------------------------------------------------------


def test_metadata_names_shapes_and_dtypes(mixed, tmp_path):
    out = tmp_path / "mixed.gguf"
    result = invoke("export-gguf", mixed, "-o", out)
    assert result.exit_code == 0, result.stderr
    fields, tensors = read_gguf(out)
    assert fields["general.architecture"] == "llama"
    assert fields["general.type"] == "adapter"
    assert fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 6.0  # the highest rank, every pair padded to it
    kinds = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
    names = {f"blk.{n}.{k}.weight.lora_{ab}" for n in range(2) for k in kinds for ab in "ab"}
    assert set(tensors) == names
    shapes = {"attn_q": (32, 32), "attn_k": (16, 32), "attn_v": (16, 32), "attn_output": (32, 32)}
    shapes |= {"ffn_gate": (48, 32), "ffn_up": (48, 32), "ffn_down": (32, 48)}
    for name, t in tensors.items():
        out_dim, in_dim = shapes[name.split(".")[2]]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert np.asarray(t.data).shape == ((6, in_dim) if name.endswith("lora_a") else (out_dim, 6)), name


def test_every_delta_is_the_adapters_scaled_delta(mixed, tmp_path):
    out = tmp_path / "mixed.gguf"
    assert invoke("export-gguf", mixed, "-o", out).exit_code == 0
    fields, tensors = read_gguf(out)
    adapter = read_adapter(mixed)
    heads = {"q_proj": HEADS, "k_proj": KV_HEADS}
    for name, module in adapter.modules.items():
        layer, kind = name.split(".")[2], name.rsplit(".", 1)[1]
        tensor = f"blk.{layer}.{BLOCK_TENSORS[name.split('.', 3)[3]]}.weight"
        got = gguf_delta(tensors, tensor, fields["adapter.lora.alpha"], heads.get(kind))
        want = module.delta().double().numpy()
        assert np.allclose(got, want, rtol=1e-5, atol=1e-6), name
    q = adapter.modules["model.layers.0.self_attn.q_proj"]  # the reorder is real: rows move
    B = np.asarray(tensors["blk.0.attn_q.weight.lora_b"].data)[:, : q.rank]
    assert not np.allclose(B, q.scale * q.B.numpy(), atol=1e-6)


def test_names_and_row_order_agree_with_the_gguf_package():
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 4)
    for within, tensor in BLOCK_TENSORS.items():
        assert names.get_name(f"model.layers.3.{within}") == f"blk.3.{tensor}"
    rows = np.arange(48 * 5).reshape(48, 5)
    # the converter's form of the same reorder: (heads, 2, half, ...) with the middle axes swapped
    theirs = rows.reshape(6, 2, 4, 5).swapaxes(1, 2).reshape(48, 5)
    assert np.array_equal(rows[rope_order(48, 6)], theirs)


def test_json_report(mixed, tmp_path):
    out = tmp_path / "mixed.gguf"
    result = invoke("export-gguf", mixed, "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert list(doc) == [
        "loramix", "out", "format", "adapter", "base_config", "architecture", "rank", "alpha",
        "source_ranks", "padded", "reordered", "modules", "tensors", "dtype", "bytes", "warnings", "seconds",
    ]  # fmt: skip
    assert doc["rank"] == 6 and doc["alpha"] == 6.0 and doc["source_ranks"] == [2, 4, 6]
    assert doc["modules"] == 14 and doc["tensors"] == 28 and doc["padded"] == 12 and doc["reordered"] == 4
    assert doc["bytes"] == out.stat().st_size and doc["dtype"] == "F32"


def test_force_replaces_and_base_names_another_base(mixed, base, tmp_path):
    out = tmp_path / "a.gguf"
    out.write_bytes(b"old")
    copy = shutil.copytree(base, tmp_path / "copy")
    result = invoke("export-gguf", mixed, "-o", out, "--force", "--base", copy)
    assert result.exit_code == 0, result.stderr
    assert out.read_bytes()[:4] == b"GGUF"
    assert flat("records the base") in flat(result.stderr)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# --- refusals ----------------------------------------------------------------------------------------


def refused(tmp_path: Path, *args, says: str) -> None:
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = invoke("export-gguf", *args)
    assert result.exit_code == 2, result.stdout + result.stderr
    assert flat(says) in flat(result.stderr), result.stderr
    assert flat(result.stderr).count("error:") == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, no temporary file


def test_refuses_an_existing_out_without_force(mixed, tmp_path):
    out = tmp_path / "x.gguf"
    out.write_bytes(b"keep")
    refused(tmp_path, mixed, "-o", out, says="already exists")
    assert out.read_bytes() == b"keep"


def test_refuses_an_out_inside_the_adapter(mixed, tmp_path):
    copy = shutil.copytree(mixed, tmp_path / "ad")
    refused(tmp_path, copy, "-o", copy / "x.gguf", says="lies inside the input")


def test_refuses_other_families_naming_them(mixed, base, tmp_path):
    other = tmp_path / "gpt2"
    other.mkdir()
    config = json.loads((base / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    refused(tmp_path, mixed, "-o", tmp_path / "x.gguf", "--base", other, says="the base is a 'gpt2' model")


def test_refuses_an_adapter_for_another_shape(mixed, tmp_path):
    wide = tiny_llama(tmp_path / "wide")
    config = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**config, "intermediate_size": 64}))
    refused(tmp_path, mixed, "-o", tmp_path / "x.gguf", "--base", wide, says="but the base")


def test_refuses_a_base_it_cannot_find(mixed, tmp_path):
    copy = shutil.copytree(mixed, tmp_path / "ad")
    config = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "nobody/nothing"}))
    refused(tmp_path, copy, "-o", tmp_path / "x.gguf", says="not a local folder")


def lora_folder(folder: Path, base: Path, modules: dict[str, tuple[int, int]], r: int = 2) -> Path:
    """A PEFT-layout adapter written by hand, for modules PEFT would not make on a Llama."""
    folder.mkdir()
    tensors = {}
    for name, (out, inp) in modules.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = torch.randn(r, inp)
        tensors[f"base_model.model.{name}.lora_B.weight"] = torch.randn(out, r)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": r, "lora_alpha": r, "base_model_name_or_path": str(base)}
    config["target_modules"] = sorted({n.rsplit(".", 1)[-1] for n in modules})
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def test_refuses_a_module_llama_cpp_has_no_tensor_for(base, tmp_path):
    ad = lora_folder(tmp_path / "ad", base, {"model.layers.0.self_attn.rotary_proj": (32, 32)})
    refused(tmp_path, ad, "-o", tmp_path / "x.gguf", says="has no tensor in llama.cpp's llama models")


def test_refuses_a_layer_the_base_does_not_have(base, tmp_path):
    ad = lora_folder(tmp_path / "ad", base, {"model.layers.7.self_attn.q_proj": (32, 32)})
    refused(tmp_path, ad, "-o", tmp_path / "x.gguf", says="is in layer 7, but the base has 2 layers")


def test_refuses_lm_head_on_a_tied_base(base, tmp_path):
    tied = shutil.copytree(base, tmp_path / "tied")
    config = json.loads((tied / "config.json").read_text())
    (tied / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    ad = lora_folder(tmp_path / "ad", tied, {"lm_head": (64, 32)})
    refused(tmp_path, ad, "-o", tmp_path / "x.gguf", says="ties to its embeddings")


def test_lm_head_on_an_untied_base_is_output(base, tmp_path):
    ad = lora_folder(tmp_path / "ad", base, {"lm_head": (64, 32), "model.layers.1.mlp.down_proj": (32, 48)})
    assert invoke("export-gguf", ad, "-o", tmp_path / "x.gguf").exit_code == 0
    _, tensors = read_gguf(tmp_path / "x.gguf")
    assert set(tensors) == {f"{t}.lora_{ab}" for t in ("output.weight", "blk.1.ffn_down.weight") for ab in "ab"}


def test_refuses_dora(base, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=2, target_modules=TARGETS, use_dora=True)
    )
    model.save_pretrained(tmp_path / "dora")
    refused(tmp_path, tmp_path / "dora", "-o", tmp_path / "x.gguf", says="DoRA")


def test_a_failed_write_leaves_nothing(mixed, tmp_path, monkeypatch):
    from loramix.export import gguf as export

    def broken(path, *args):
        Path(path).write_bytes(b"GGUF half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "write_gguf", broken)
    out = tmp_path / "deep" / "x.gguf"
    with pytest.raises(Exception, match="no space left"):
        export.export_gguf(export.GgufRequest(adapter=mixed, out=out))
    assert list(tmp_path.iterdir()) == []


# --- the bundled tokenizer -----------------------------------------------------------------------------


def test_bundled_tokenizer_class_loads_in_transformers_4_and_5_with_the_same_tokens():
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from loramix.zoo import skills

    folder = bundled_path()
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    tok, raw = AutoTokenizer.from_pretrained(folder), Tokenizer.from_file(str(folder / "tokenizer.json"))
    texts = [r["prompt"] + r["completion"] for name in skills.SKILLS for r in skills.rows(name, "train", 60)]
    for text in texts:
        assert tok(text).input_ids == raw.encode(text).ids, text
        assert tok.decode(tok(text).input_ids) == text
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")


def test_pretrain_saves_the_portable_tokenizer_class(tmp_path):
    from transformers import AutoTokenizer

    from loramix.train.pretrain import TOKENIZER_CLASS, save_tokenizer

    bundled = AutoTokenizer.from_pretrained(bundled_path())
    save_tokenizer(bundled, tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == TOKENIZER_CLASS
    assert AutoTokenizer.from_pretrained(tmp_path)("Problem: 12 + 3").input_ids == bundled("Problem: 12 + 3").input_ids


# --- llama.cpp itself ----------------------------------------------------------------------------------


def write_base_gguf(folder: Path, out: Path) -> None:
    """The bundled base as llama.cpp's converter writes it (f32, q/k rows reordered, gpt2 BPE vocab
    with the starcoder pre-tokenizer), written here so that the test needs no llama.cpp checkout."""
    from safetensors.torch import load_file

    config = json.loads((folder / "config.json").read_text())
    heads, kv, dim = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    w = gguf.GGUFWriter(out, arch="llama")
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(dim)
    w.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_vocab_size(config["vocab_size"])
    add_vocab(w, folder, config["vocab_size"])
    names = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    names |= {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", **BLOCK_TENSORS}
    for key, t in load_file(str(folder / "model.safetensors")).items():
        module, parts = key.removesuffix(".weight"), key.split(".")
        array = t.float().numpy()
        if parts[1] == "layers":
            within = ".".join(parts[3:-1])
            name = f"blk.{parts[2]}.{names[within]}"
            count = {"self_attn.q_proj": heads, "self_attn.k_proj": kv}.get(within)
            array = array[rope_order(array.shape[0], count)] if count else array
        else:
            name = names[module]
        w.add_tensor(name + ".weight", np.ascontiguousarray(array))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def add_vocab(w, folder: Path, size: int) -> None:
    doc = json.loads((folder / "tokenizer.json").read_text())
    tokens = {i: t for t, i in doc["model"]["vocab"].items()} | {a["id"]: a["content"] for a in doc["added_tokens"]}
    special = {a["id"] for a in doc["added_tokens"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("starcoder")
    w.add_token_list([tokens.get(i, f"[PAD{i}]") for i in range(size)])
    w.add_token_types([3 if i in special else 1 if i in tokens else 5 for i in range(size)])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in doc["model"]["merges"]])


@pytest.mark.slow
def test_llama_cpp_logits_match_peft(tmp_path):
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (pip compiles it from source: about 15 minutes)"
    )
    if not hasattr(llama_cpp, "Llama"):  # a folder named llama_cpp on the path, not the package
        pytest.skip(f"llama_cpp at {getattr(llama_cpp, '__path__', '?')} is not llama-cpp-python")
    from transformers import AutoTokenizer

    from loramix.zoo import skills

    folder = bundled_path()
    adapter = make_adapter(folder, tmp_path / "ad", r=4, alpha=8, seed=9, use_rslora=True, scale_b=0.1,
                           rank_pattern={"q_proj": 8}, alpha_pattern={"up_proj": 2})  # fmt: skip
    assert invoke("export-gguf", adapter, "-o", tmp_path / "lora.gguf").exit_code == 0
    write_base_gguf(folder, tmp_path / "base.gguf")
    tok = AutoTokenizer.from_pretrained(folder)
    prompts = [tok(r["prompt"]).input_ids for r in skills.rows("math", "eval", 20)]
    peft, base = _peft(folder, adapter, prompts), _peft(folder, None, prompts)
    theirs = {}
    for lora in (None, str(tmp_path / "lora.gguf")):
        llm = llama_cpp.Llama(str(tmp_path / "base.gguf"), lora_path=lora, n_ctx=256, logits_all=True, verbose=False)
        rows = []
        for ids in prompts:
            llm.reset()
            llm.eval(ids)
            rows.append(np.array(llm.scores[: len(ids)]))
        theirs[lora is not None] = np.concatenate(rows)
    effect = np.abs(peft - base).max()
    assert effect > 1.0  # the LoRA changes the logits a lot: a lost scale or row order would show
    assert np.abs(theirs[False] - base).max() < 0.02
    assert np.abs(theirs[True] - peft).max() < 0.02
    ends = np.cumsum([len(p) for p in prompts]) - 1
    assert (theirs[True][ends].argmax(-1) == peft[ends].argmax(-1)).sum() >= 19


def _peft(folder: Path, adapter: Path | None, prompts: list[list[int]]) -> np.ndarray:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        return np.concatenate([model.eval()(torch.tensor([ids])).logits[0].numpy() for ids in prompts])
