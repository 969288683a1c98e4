"""loramix's LoRA GGUF (`loramix export-gguf`) in llama.cpp itself, against PEFT's logits.

    python bench/llama_cpp.py --llama-cpp /tmp/work/llama.cpp --python /tmp/work/lcpp-venv/bin/python \
        [--prompts 24] [--steps 80] [--work DIR] [--out bench/results/llama_cpp.md]

Run it with loramix's own Python (torch, transformers 5, peft, gguf). It needs two things outside
the repository, given as arguments:

- `--llama-cpp DIR`: a llama.cpp source tree with convert_hf_to_gguf.py, convert_lora_to_gguf.py,
  conversion/ and gguf-py/. The one measured is the tree llama-cpp-python 0.3.36 vendors:
  `pip download llama-cpp-python==0.3.36 --no-binary :all: --no-deps`, then copy the sdist's
  vendor/llama.cpp out (so converter and runtime are one version).
- `--python PY`: the Python of a separate venv holding llama.cpp's converter requirements as
  pinned in its requirements/ (transformers==4.57.6, numpy~=2.2.6, sentencepiece, protobuf<5, torch,
  safetensors) and `llama-cpp-python==0.3.36` (PyPI has only its sdist: pip compiles it, about
  15 minutes on 2 cores).

It converts the base with llama.cpp's converter, writes LoRA GGUFs of three adapters with
`loramix export-gguf` and with llama.cpp's convert_lora_to_gguf.py, and compares llama-cpp-python's
logits with PEFT's; REPORT below says what each step is and how to read the numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
F32 = ["--outtype", "f32"]
sys.path.insert(0, str(ROOT))

# run by the llama.cpp Python: llama.cpp's convert_hf_to_gguf.py, with a BPE pre-tokenizer its hash
# table does not know given the name argv[2] (a known one keeps the converter's own answer)
CONVERT_NAMING_PRE = r"""
import runpy, sys
checkout, pre = sys.argv[1], sys.argv[2]
sys.argv = [checkout + "/convert_hf_to_gguf.py"] + sys.argv[3:]
sys.path[:0] = [checkout, checkout + "/gguf-py"]
from conversion import base
shipped = base.TextModel.get_vocab_base_pre
def named(self, tokenizer):
    try:
        return shipped(self, tokenizer)
    except NotImplementedError:
        return pre
base.TextModel.get_vocab_base_pre = named
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# run by the llama.cpp Python: logits of every prompt for the base and each LoRA, and tokens of texts
LLAMA_SIDE = r"""
import json, sys
import numpy as np
import llama_cpp
from llama_cpp import Llama
job = json.load(open(sys.argv[1]))
errors = {}
for run in job["runs"]:
    kw = dict(model_path=run["model"], n_ctx=512, logits_all=True, verbose=False, n_threads=job["threads"])
    if run["lora"]:
        kw["lora_path"] = run["lora"]
    try:
        llm = Llama(**kw)
    except Exception as e:
        errors[run["name"]] = f"{type(e).__name__}: {e}"
        continue
    rows = []
    for ids in job["prompts"]:
        llm.reset(); llm.eval(ids); rows.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
    np.save(job["dir"] + "/" + run["name"] + ".npy", np.concatenate(rows))
    llm.close()
llm = Llama(model_path=job["runs"][0]["model"], vocab_only=True, verbose=False)
tokens = [llm.tokenize(t.encode(), add_bos=False, special=False) for t in job["texts"]]
json.dump(tokens, open(job["dir"] + "/tokens.json", "w"))
print(json.dumps({"llama_cpp_python": llama_cpp.__version__, "errors": errors}))
"""


def run(args: list[str], what: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=3600)
    if proc.returncode != 0 and what:
        print(f"{what} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", file=sys.stderr)
    return proc


def last_error(proc: subprocess.CompletedProcess) -> str:
    """The exception line a failed Python run ended with."""
    lines = [ln for ln in proc.stderr.splitlines() if ln and not ln.startswith(" ")]
    return lines[-1] if lines else f"exit {proc.returncode}"


def shipped_converter(py: str, checkout: Path, bundled: Path, work: Path, strings: list[str]) -> list[tuple[str, str]]:
    """The converter as shipped, on the tokenizer as transformers 5 saves it, as loramix ships it, and
    with the one edit of our own files that gets past the hash check (`spm_route`)."""
    old = copy_model(bundled, work / "tiny-tokenizers-backend")
    config = json.loads((old / "tokenizer_config.json").read_text())
    (old / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "TokenizersBackend"}))
    rows = []
    for label, folder in (("`TokenizersBackend` (what transformers 5 saves)", old), ("`PreTrainedTokenizerFast` (shipped)", bundled)):  # fmt: skip
        proc = vocab_only(py, checkout, folder, work / "x.gguf")
        found = [ln.split("chkhsh:")[1].strip() for ln in proc.stderr.splitlines() if "chkhsh:" in ln]
        rows.append((label, f"`{last_error(proc)}`" + (f" (chkhsh `{found[0]}`)" if found else "")))
    return rows + [spm_route(py, checkout, bundled, work, strings)]


def vocab_only(py: str, checkout: Path, folder: Path, out: Path) -> subprocess.CompletedProcess:
    return run([py, "convert_hf_to_gguf.py", str(folder), "--vocab-only", "--outfile", str(out)], "", checkout)


def spm_route(py: str, checkout: Path, bundled: Path, work: Path, strings: list[str]) -> tuple[str, str]:
    """tokenizer.json with byte_fallback and a Sequence decoder (transformers' tokens unchanged) sends
    the Llama converter down the SentencePiece-style vocab, which has no hash check; llama.cpp's
    tokenizer then looks for byte tokens the vocabulary does not have."""
    from transformers import AutoTokenizer

    folder = copy_model(bundled, work / "tiny-spm-route")
    doc = json.loads((folder / "tokenizer.json").read_text())
    doc["model"]["byte_fallback"] = True
    doc["decoder"] = {"type": "Sequence", "decoders": [doc["decoder"]]}
    (folder / "tokenizer.json").write_text(json.dumps(doc, ensure_ascii=False))
    ours, theirs = AutoTokenizer.from_pretrained(bundled), AutoTokenizer.from_pretrained(folder)
    same = sum(ours(t).input_ids == theirs(t).input_ids for t in strings)
    label = f"`PreTrainedTokenizerFast`, tokenizer.json with `byte_fallback: true` and a `Sequence` decoder (transformers' tokens unchanged on {same}/{len(strings)} strings)"
    proc = vocab_only(py, checkout, folder, work / "spm-route.gguf")
    if proc.returncode != 0:
        return label, f"`{last_error(proc)}`"
    probe = f"from llama_cpp import Llama; print(Llama(model_path={str(work / 'spm-route.gguf')!r}, vocab_only=True, verbose=False).tokenize(b'Problem: 2 + 3', add_bos=False))"
    ran = run([py, "-c", probe], "")
    why = " ".join(ln.strip() for ln in ran.stderr.splitlines() if "what():" in ln or "terminate called" in ln)
    then = (
        f"tokenizes: {ran.stdout.strip()}"
        if ran.returncode == 0
        else f"aborts (exit {ran.returncode}): `{why or last_error(ran)}`"
    )
    return label, f"converts (tokenizer.ggml.model `llama`, no hash check); llama.cpp's tokenizer then {then}"


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, dirs_exist_ok=True)
    return dst


def convert_model(py: str, checkout: Path, folder: Path, pre: str, out: Path) -> None:
    args = [py, "-c", CONVERT_NAMING_PRE, str(checkout), pre, str(folder), *F32, "--outfile", str(out)]
    if run(args, f"converting {folder}", checkout).returncode != 0:
        raise SystemExit(1)


def loramix(*args: str) -> list[str]:
    if run([sys.executable, "-m", "loramix", *args], " ".join(args[:2])).returncode != 0:
        raise SystemExit(1)
    return ["loramix", *args]


def adapters(work: Path, steps: int) -> tuple[dict[str, Path], list[list[str]]]:
    """Step 3's three adapters, and the loramix commands that made them."""
    from loramix.core.models import bundled_path
    from tests.helpers import make_adapter

    math = str(work / "math")
    commands = [
        loramix("train-skill", "builtin:math", "-o", math, "--max-steps", str(steps), "--rank", "16", "--threads", "2")
    ]
    mixed = make_adapter(
        bundled_path(), work / "mixed", r=8, alpha=16, seed=5, use_rslora=True, scale_b=0.2,
        rank_pattern={"q_proj": 4, "down_proj": 12}, alpha_pattern={"v_proj": 4, "up_proj": 30},
    )  # fmt: skip
    config = json.loads((mixed / "adapter_config.json").read_text())
    (mixed / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "loramix-tiny"}))
    commands.append(loramix("merge", math, str(mixed), "-m", "ties", "--density", "0.5", "-o", str(work / "ties")))
    return {"math": work / "math", "mixed": mixed, "ties": work / "ties"}, commands


def lora_ggufs(py: str, checkout: Path, bundled: Path, found: dict[str, Path], work: Path) -> dict[str, str | None]:
    """Each adapter by loramix export-gguf and by llama.cpp's convert_lora_to_gguf.py (None where it failed)."""
    files: dict[str, str | None] = {}
    for name, folder in found.items():
        loramix("export-gguf", str(folder), "-o", str(work / f"{name}.loramix.gguf"), "--force")
        files[f"{name}.loramix"] = str(work / f"{name}.loramix.gguf")
        out = work / f"{name}.converter.gguf"
        args = [py, "convert_lora_to_gguf.py", str(folder), "--base", str(bundled), *F32, "--outfile", str(out)]
        done = run(args, f"convert_lora_to_gguf {name}", checkout).returncode == 0
        files[f"{name}.converter"] = str(out) if done else None
    return files


def merged_f32(bundled: Path, adapter: Path, out: Path) -> Path:
    """The control: the adapter's exact deltas added to a float32 copy of the base (no LoRA at run time)."""
    import torch
    from transformers import AutoModelForCausalLM

    from loramix.core.adapters import read_adapter

    model = AutoModelForCausalLM.from_pretrained(bundled, dtype=torch.float32)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, module in read_adapter(adapter).modules.items():
            params[f"{name}.weight"] += module.delta()
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(bundled / name, out / name)
    return out


def peft_logits(base: Path, adapter: Path | None, prompts: list[list[int]]):
    import numpy as np
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    with torch.no_grad():
        return np.concatenate([model(torch.tensor([ids])).logits[0].float().numpy() for ids in prompts])


def compare(got, want, ends: list[int]) -> dict:
    import numpy as np

    last = [e - 1 for e in ends]
    return {
        "max": float(np.abs(got - want).max()),
        "next": int((got[last].argmax(-1) == want[last].argmax(-1)).sum()),
        "positions": float((got.argmax(-1) == want.argmax(-1)).mean()),
    }


def versions(py: str) -> str:
    from importlib.metadata import version

    code = "import transformers as t, torch, numpy as n, llama_cpp as l; print(t.__version__, torch.__version__, n.__version__, l.__version__)"
    theirs = dict(zip(("transformers", "torch", "numpy", "llama-cpp-python"), run([py, "-c", code], "versions").stdout.split()))  # fmt: skip
    ours = {k: version(k) for k in ("loramix", "torch", "transformers", "peft", "gguf")}
    said = [", ".join(f"{k} {v}" for k, v in side.items()) for side in (ours, theirs)]
    return f"loramix side (Python {platform.python_version()}): {said[0]}. llama.cpp side: {said[1]}."


def texts() -> list[str]:
    from loramix.zoo import skills

    found = []
    for name in skills.SKILLS:
        for row in skills.rows(name, "train", 100):
            found += [row["prompt"], row["prompt"] + row["completion"]]
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--llama-cpp", type=Path, required=True, help="llama.cpp source tree (converters and gguf-py)")
    p.add_argument("--python", required=True, help="Python of the venv with the converter's needs and llama-cpp-python")
    p.add_argument("--pre", default="starcoder", help="the BPE pre-tokenizer name given to the converter")
    p.add_argument("--prompts", type=int, default=24)
    p.add_argument("--steps", type=int, default=80, help="training steps of the math LoRA")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    start = time.time()
    work = a.work or Path(tempfile.mkdtemp(prefix="llama-cpp-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    from transformers import AutoTokenizer

    from loramix.core.models import bundled_path
    from loramix.zoo import skills

    bundled, checkout, strings = bundled_path(), a.llama_cpp.resolve(), texts()
    shipped = shipped_converter(a.python, checkout, bundled, work, strings)
    convert_model(a.python, checkout, bundled, a.pre, work / "base.gguf")
    found, commands = adapters(work, a.steps)
    files = lora_ggufs(a.python, checkout, bundled, found, work)
    control = merged_f32(bundled, found["mixed"], work / "mixed-merged-f32")
    convert_model(a.python, checkout, control, a.pre, work / "mixed-merged.gguf")
    tok = AutoTokenizer.from_pretrained(bundled)
    prompts = [tok(r["prompt"], add_special_tokens=False).input_ids for r in skills.rows("math", "eval", a.prompts)]
    base, merged = str(work / "base.gguf"), str(work / "mixed-merged.gguf")
    runs = [{"name": "base", "model": base, "lora": None}, {"name": "mixed.merged", "model": merged, "lora": None}]
    runs += [{"name": k, "model": base, "lora": v} for k, v in files.items() if v]
    job = {"runs": runs, "prompts": prompts, "texts": strings, "dir": str(work), "threads": a.threads}
    (work / "job.json").write_text(json.dumps(job))
    proc = run([a.python, "-c", LLAMA_SIDE, str(work / "job.json")], "llama-cpp-python")
    if proc.returncode != 0:
        return 1
    errors = json.loads(proc.stdout.strip().splitlines()[-1])["errors"]
    tokens = json.loads((work / "tokens.json").read_text())
    same = sum(t == tok(s, add_special_tokens=False).input_ids for s, t in zip(strings, tokens))
    rows = measure(work, bundled, found, files, errors, prompts)
    minutes = (time.time() - start) / 60
    text = render(a, versions(a.python), shipped, commands, (same, len(strings)), rows, len(prompts), found, minutes)
    print(text)
    if a.out:
        a.out.write_text(text)
    return 0


def measure(work: Path, bundled: Path, found: dict, files: dict, errors: dict, prompts: list[list[int]]) -> list[dict]:
    import numpy as np

    ends = list(np.cumsum([len(p) for p in prompts]))
    base = peft_logits(bundled, None, prompts)
    rows = [{"name": "(none)", "file": "base.gguf alone", **compare(np.load(work / "base.npy"), base, ends), "effect": 0.0}]  # fmt: skip
    for name, folder in found.items():
        ref = peft_logits(bundled, folder, prompts)
        effect = float(np.abs(ref - base).max())
        for key, label in ((f"{name}.loramix", "`loramix export-gguf`"), (f"{name}.converter", "`convert_lora_to_gguf.py`")):  # fmt: skip
            row = {"name": name, "file": label}
            if files.get(key) is None or key in errors:
                row["error"] = errors.get(key, "the converter failed")[:160]
            else:
                row.update(compare(np.load(work / f"{key}.npy"), ref, ends), effect=effect)
            rows.append(row)
        if name == "mixed":
            got = compare(np.load(work / "mixed.merged.npy"), ref, ends)
            rows.append({"name": name, "file": "control: the deltas merged into f32 weights, no LoRA", **got, "effect": effect})  # fmt: skip
    return rows


REPORT = """# loramix's LoRA GGUF in llama.cpp

`{cmd}` ({minutes:.0f} min on 2 CPU cores). {versions} The llama.cpp tree is the one the llama-cpp-python
0.3.36 sdist vendors: converters, gguf-py and runtime of one version.

## The shipped converter and the bundled tokenizer

| tokenizer files | `convert_hf_to_gguf.py` as shipped |
|---|---|
{shipped}

- `tokenizer_class`: transformers 5 saves `TokenizersBackend`, which the converter's pinned transformers 4.57.6
  cannot load. `PreTrainedTokenizerFast` is the same class in transformers 5 and loads in 4.57.6; loramix ships
  the bundled tokenizer so and `loramix.train.pretrain` saves it so.
- The pre-tokenizer: the converter names a BPE pre-tokenizer by the sha256 of the token ids its tokenizer gives
  for one fixed text, looked up in a table of published models. The ids depend on the vocabulary and merges
  (which the weights depend on), so no setting in our tokenizer files yields a known hash; the one other route
  (the SentencePiece-style vocab, last row) converts but gives a GGUF whose tokenizer aborts. `--vocab-only`
  runs the same check (the rows above used it), and `convert_hf_to_gguf_update.py`, which adds models to the
  table, downloads them from the hub. The shipped converter needs one added line in `conversion/base.py`,
  `TextModel.get_vocab_base_pre` (`convert_hf_to_gguf.py` in trees older than `conversion/`), beside the other
  hashes: `if chkhsh == "{chkhsh}": res = "{pre}"`; or a wrapper that answers the check, as here
  (`CONVERT_NAMING_PRE`: `python -c "$CONVERT_NAMING_PRE" LLAMA_CPP {pre} MODEL --outtype f32 --outfile F`).
- `{pre}` is llama.cpp's pre-tokenizer that splits every digit on its own and then applies GPT-2's byte-level
  split, as the bundled tokenizer.json's `Sequence[Digits(individual_digits), ByteLevel]` does. With it
  llama.cpp's tokens equal transformers' on {same_tokens} prompt and prompt+completion strings of the skills.

## llama-cpp-python against PEFT

Adapters: {commands}; `mixed` is a random PEFT LoRA (r 8, q_proj 4, down_proj 12; lora_alpha 16, v_proj 4,
up_proj 30; rsLoRA). Ranks per module: {ranks}. Each is written by `loramix export-gguf ADAPTER -o FILE` and
by `convert_lora_to_gguf.py ADAPTER --base loramix-tiny --outtype f32`, loaded with `Llama(model_path=base.gguf,
lora_path=FILE, logits_all=True)` and fed the token ids of the first {n} `builtin:math:eval` prompts; PEFT is
`PeftModel.from_pretrained` on the float32 base. Gaps are over every position and the whole vocabulary;
"next token" is the argmax after each prompt.

| adapter | LoRA GGUF | max abs logit gap to PEFT | next token agrees | argmax agrees, all positions | the LoRA's own effect (max abs logit change) |
|---|---|---|---|---|---|
{table}

- One rank and plain alpha (`math`): both files give the same logits.
- Per-module ranks and alphas, rsLoRA (`mixed`; the `ties` merge, whose peft profile has `rank_pattern` and
  `alpha_pattern`): the converter reads one `lora_alpha` and divides it by each pair's rank, so every module
  whose scale is not lora_alpha/r is scaled wrongly. loramix folds each module's scale into B and writes
  alpha equal to the one (zero-padded) rank, so llama.cpp's scale is 1 everywhere.
- The control runs `mixed`'s exact deltas merged into float32 weights, no LoRA at run time: it is as far from
  PEFT as the LoRA GGUF, so that gap is llama.cpp's float32 arithmetic on a strongly perturbed model, not the
  file (whose deltas equal PEFT's to float32 precision: tests/test_export_gguf.py).
"""


def render(a, vers: str, shipped, commands, same_tokens, rows, n: int, found: dict, minutes: float) -> str:
    from loramix.core.adapters import read_adapter

    cmd = f"python bench/llama_cpp.py --llama-cpp {a.llama_cpp} --python {a.python} --prompts {a.prompts} --steps {a.steps} --pre {a.pre} --out bench/results/llama_cpp.md"
    table = [
        f"| {r['name']} | {r['file']} | {r['error']} | - | - | - |"
        if "error" in r
        else f"| {r['name']} | {r['file']} | {r['max']:.2e} | {r['next']}/{n} | {r['positions']:.1%} | {r['effect']:.3g} |"
        for r in rows
    ]
    ranks = "; ".join(f"{k} {sorted({m.rank for m in read_adapter(v).modules.values()})}" for k, v in found.items())
    chkhsh = next((o.split("chkhsh `")[1].split("`")[0] for _, o in shipped if "chkhsh `" in o), "?")
    shipped = "\n".join(f"| {label} | {outcome} |" for label, outcome in shipped)
    commands = "; ".join(f"`{' '.join(c)}`" for c in commands).replace(str(a.work or "\0"), "WORK")
    same, table = f"{same_tokens[0]}/{same_tokens[1]}", "\n".join(table)
    return REPORT.format(cmd=cmd, versions=vers, minutes=minutes, shipped=shipped, chkhsh=chkhsh, pre=a.pre, same_tokens=same, commands=commands, ranks=ranks, n=n, table=table)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
