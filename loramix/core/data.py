"""Training and evaluation data: JSONL files in three row formats, or `builtin:NAME[:SPLIT]`.

Rows are {"prompt", "completion"} (loss on the completion only), {"text"} (loss on all of it) or
{"messages": [...]} (rendered with the tokenizer's chat template, loss on assistant turns only
where the template marks them, else on all of it); any row may add "answer". Tokenized examples
are (input_ids, labels) with -100 on the tokens that carry no loss.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from loramix.core import jsontext, log
from loramix.core.errors import InputError

IGNORE = -100
# a bound on the characters one token covers (real vocabularies stay far below it), so that a
# 50 MB row costs what its first --max-length tokens cost
CHARS_PER_TOKEN = 64
BUILTIN = "builtin:"


@dataclass(frozen=True)
class Dataset:
    source: str  # the DATA argument as given
    rows: list[dict]

    @property
    def digest(self) -> str:
        """sha256 of the rows as canonical JSON: names the exact data a run saw."""
        h = hashlib.sha256()
        for row in self.rows:
            h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode() + b"\n")
        return h.hexdigest()


def load(source: str, limit: int | None = None) -> Dataset:
    """Read DATA (a JSONL path or builtin:NAME[:SPLIT]); every row is checked, errors name the line."""
    if limit is not None and limit < 1:
        raise InputError(f"--limit {limit}: must be at least 1")
    rows = _builtin(source, limit) if source.startswith(BUILTIN) else _jsonl(Path(source), limit)
    return Dataset(source, rows)


def _builtin(source: str, limit: int | None) -> list[dict]:
    from loramix.zoo.skills import SKILLS, SPLITS, rows

    name, _, split = source[len(BUILTIN) :].partition(":")
    split = split or "train"
    if name not in SKILLS:
        raise InputError(f"{source}: no built-in skill {name!r}", hint=f"built-in skills: {', '.join(SKILLS)}")
    if split not in SPLITS:
        raise InputError(f"{source}: no split {split!r}", hint=f"splits: {', '.join(SPLITS)}")
    try:
        return rows(name, split, limit)
    except ValueError as e:
        raise InputError(f"{source}: {e}", hint="ask for fewer rows with --limit")


def _jsonl(path: Path, limit: int | None) -> list[dict]:
    if not path.is_file():
        raise InputError(
            f"{path}: {_not_a_file(path)}", hint="DATA is a JSONL file or builtin:NAME (see `loramix data`)"
        )
    rows = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{number}: not UTF-8 text ({e.reason} at byte {e.start} of the line)")
            if not line.strip():
                continue
            rows.append(check_row(_parse(line, path, number), f"{path}:{number}"))
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise InputError(
            f"{path}: no rows", hint='one JSON object per line: {"prompt", "completion"}, {"text"} or {"messages"}'
        )
    return rows


def _not_a_file(path: Path) -> str:
    """What a DATA path that is no regular file is."""
    import stat

    if path.is_symlink() and not path.exists():
        return "is a broken or looping symbolic link"
    if not path.exists():
        return "no such file"
    mode = path.stat().st_mode
    if stat.S_ISDIR(mode):
        return "is a folder, not a JSONL file"
    if stat.S_ISFIFO(mode):
        return "is a named pipe (FIFO), not a JSONL file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a JSONL file"
    return "is not a regular file"


def _parse(line: str, path: Path, number: int) -> dict:
    try:
        row = jsontext.loads(line, f"{path}:{number}")
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{number}: not JSON ({e.msg} at column {e.colno})")
    if not isinstance(row, dict):
        raise InputError(f"{path}:{number}: a row must be a JSON object, not {type(row).__name__}")
    return row


def kind(row: dict) -> str:
    """'prompt', 'text' or 'messages'."""
    return "prompt" if "prompt" in row else "text" if "text" in row else "messages"


def check_row(row: dict, where: str) -> dict:
    """Return the row if it has exactly one usable format, else raise InputError naming `where`."""
    formats = [k for k in ("prompt", "text", "messages") if k in row]
    if len(formats) != 1:
        found = ", ".join(sorted(row)) or "no fields"
        raise InputError(f'{where}: needs exactly one of "prompt"+"completion", "text" or "messages" (found {found})')
    if "prompt" in row and "completion" not in row:
        raise InputError(f'{where}: has "prompt" but no "completion"')
    if "completion" in row and "prompt" not in row:
        raise InputError(f'{where}: has "completion" but no "prompt"')
    for field in ("prompt", "completion", "text"):
        if field in row and not isinstance(row[field], str):
            raise InputError(f'{where}: "{field}" must be a string')
    if "text" in row and not row["text"].strip():
        raise InputError(f'{where}: "text" is empty')
    if "messages" in row:
        _check_messages(row["messages"], where)
    return row


def _check_messages(messages, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise InputError(f'{where}: "messages" must be a non-empty list')
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise InputError(f'{where}: messages[{i}] needs string "role" and "content"')


def tokenize(row: dict, tokenizer, max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one row, cut to max_length; prompt tokens carry no loss."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    cut = max_length * CHARS_PER_TOKEN  # past this many characters no text can add a kept token
    if "prompt" in row:
        prompt, completion = split_tokens(tokenizer, row["prompt"][:cut], row["completion"][:cut])
        completion = completion + eos
        ids, labels = prompt + completion, [IGNORE] * len(prompt) + completion
    elif "text" in row:
        ids = tokenizer(row["text"][:cut]).input_ids + eos
        labels = list(ids)
    else:
        ids, labels = _chat(row["messages"], tokenizer)
    return ids[:max_length], labels[:max_length]


def split_tokens(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids): the prompt tokenized as generation will see it (with the
    tokenizer's special tokens, e.g. BOS), the completion as the tokens that follow it in the
    tokenized whole, or tokenized alone where the whole does not start with the prompt's tokens."""
    prompt_ids = tokenizer(prompt).input_ids
    whole = tokenizer(prompt + completion).input_ids
    if whole[: len(prompt_ids)] == prompt_ids:
        return prompt_ids, whole[len(prompt_ids) :]
    return prompt_ids, tokenizer(completion, add_special_tokens=False).input_ids


def _chat(messages: list[dict], tokenizer) -> tuple[list[int], list[int]]:
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(
            'a "messages" row needs a tokenizer with a chat template; this base has none',
            hint='use {"prompt", "completion"} rows, or a base model with a chat template',
        )
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = list(out["input_ids"]), out.get("assistant_masks")
    if not mask or not any(mask):  # the template cannot mark assistant turns: learn all of it
        _warn_once(
            "the chat template does not mark assistant turns ({% generation %}); "
            '"messages" rows are trained on every token, prompts included'
        )
        return ids, list(ids)
    return ids, [t if m else IGNORE for t, m in zip(ids, mask)]


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded tensors input_ids, attention_mask, labels (batch, longest)."""
    import torch

    longest = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for i, (x, y) in enumerate(examples):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def warn_held_out(source: str) -> None:
    from loramix.zoo.skills import SKILLS

    name, _, split = source.removeprefix(BUILTIN).partition(":")
    if source.startswith(BUILTIN) and (split == "eval" or SKILLS[name].composite):
        log.warn(f"{source} is held out for evaluation; a LoRA trained on it is an upper bound, not a skill")


def tokenize_rows(rows: list[dict], tokenizer, max_length: int, label: str) -> list:
    """Every row tokenized; a row that cannot be is refused with its number."""
    examples = []
    for number, row in enumerate(rows, 1):
        try:
            examples.append(tokenize(row, tokenizer, max_length))
        except InputError as e:
            raise InputError(f"{label}: row {number}: {e.message}", hint=e.hint)
        except Exception as e:  # a chat template that rejects the conversation, say
            raise InputError(f"{label}: row {number} cannot be tokenized ({type(e).__name__}: {e})")
    return examples


def has_loss(example) -> bool:
    """Whether a tokenized row keeps a labelled token after the first (the one a loss can score)."""
    return any(t != IGNORE for t in example[1][1:])


def tokenize_all(rows: list[dict], tokenizer, max_length: int, label: str) -> list:
    """Tokenized rows that keep at least one loss token within --max-length (a warning counts the rest)."""

    examples = tokenize_rows(rows, tokenizer, max_length, label)
    kept = [e for e in examples if has_loss(e)]
    if not kept:
        raise InputError(
            f"{label}: no row has a completion token within --max-length {max_length}",
            hint="raise --max-length or shorten the prompts",
        )
    if len(kept) < len(examples):
        log.warn(
            f"{len(examples) - len(kept)} of {len(examples)} rows have no completion token within "
            f"--max-length {max_length} and are skipped"
        )
    return kept


def sample(sources: list[str], fraction: float, seed: int, balance: bool = False) -> list[tuple[Dataset, list[dict]]]:
    """`fraction` of each source: a seeded sample of at least one row per source, in file order
    (the rows fit-cat --fraction --seed learns from, and `loramix data --fraction --seed` writes).
    One generator runs through the sources in order, so the sample of each depends on those before.
    With `balance` the same total is split evenly: every source gives ceil(total / sources) rows
    (all of its rows if it has fewer), so a large set no longer outweighs a small one."""
    import math
    import random

    if not 0 < fraction <= 1:
        raise InputError(f"--fraction {fraction}: must be in (0, 1]")
    datasets = [load(source) for source in sources]
    counts = [max(1, math.ceil(fraction * len(d.rows))) for d in datasets]
    if balance:
        share = math.ceil(sum(counts) / len(counts))
        counts = [min(share, len(d.rows)) for d in datasets]
    rng, out = random.Random(seed), []
    for dataset, n in zip(datasets, counts):
        chosen = sorted(rng.sample(range(len(dataset.rows)), n))
        out.append((dataset, [dataset.rows[i] for i in chosen]))
    return out


def jsonl_lines(rows: list[dict]):
    for row in rows:
        yield json.dumps(row, ensure_ascii=False)


def input_files(sources: list[str]) -> list[Path]:
    """The files among DATA sources (builtin: data is no file), to keep outputs off them."""
    return [Path(s) for s in sources if not s.startswith(BUILTIN)]


def dump(dataset: Dataset, path: Path, force: bool = False, sources: list[str] | None = None) -> int:
    """Write the rows as JSONL to `path` (via a temporary file renamed into place), never onto
    one of the `sources` they came from [default: the data set's own]."""
    from loramix.core.outputs import check_file, write_text_atomic

    check_file(path, force, "--dump", input_files(sources or [dataset.source]))
    write_text_atomic(path, "".join(line + "\n" for line in jsonl_lines(dataset.rows)))
    return len(dataset.rows)


_warned: set[str] = set()


def _warn_once(message: str) -> None:

    if message not in _warned:
        _warned.add(message)
        log.warn(message)
