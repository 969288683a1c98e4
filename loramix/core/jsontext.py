"""JSON from files users give: what json.loads lets through or fails on besides bad syntax is
refused with the file named (exit 2): nesting too deep to read, integers too long to convert,
and strings holding a lone surrogate (an escape like \\ud800 that is no character and no
tokenizer or file can take)."""

from __future__ import annotations

import json
from typing import Any

from loramix.core.errors import InputError


def loads(text: str, where: str) -> Any:
    """json.loads(text); a json.JSONDecodeError passes through for the caller to word."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deeply to read")
    except ValueError as e:  # an integer over Python's 4300-digit limit
        raise InputError(f"{where}: not valid JSON ({e})")
    _refuse_surrogates(doc, where)
    return doc


def _refuse_surrogates(doc: Any, where: str) -> None:
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as e:
                raise InputError(f"{where}: holds a lone surrogate ({item[e.start]!r}), which is no character")
