"""Training checkpoints without pickles: trainable weights and AdamW state as safetensors, the rest
as JSON, written atomically so a checkpoint is either complete or absent."""

from __future__ import annotations

import json
from pathlib import Path

from loramix.core import jsontext
from loramix.core.errors import InputError
from loramix.core.outputs import atomic_dir

STATE = "state.json"


def checkpoint_dir(out: Path) -> Path:
    return out.parent / f"{out.name}-checkpoint"


def save(folder: Path, weights: dict, opt: dict, state: dict) -> None:
    """Write `weights` (name -> tensor), the optimizer's state dict `opt` and `state` (JSON) to `folder`."""
    from safetensors.torch import save_file

    tensors, steps = {}, {}
    for index, entry in opt["state"].items():
        for key, value in entry.items():
            if key == "step":
                steps[str(index)] = float(value)
            else:
                tensors[f"{index}.{key}"] = value.detach().contiguous()
    with atomic_dir(folder, force=True) as tmp:
        save_file({k: v.detach().contiguous() for k, v in weights.items()}, str(tmp / "weights.safetensors"))
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        doc = dict(state, optimizer_steps=steps, param_groups=opt["param_groups"])
        (tmp / STATE).write_text(json.dumps(doc, indent=1) + "\n")


def load(folder: Path) -> tuple[dict, dict, dict]:
    """(weights, optimizer state dict, state) from a folder written by `save`."""
    import torch
    from safetensors.torch import load_file

    if not (folder / STATE).is_file():
        raise InputError(f"{folder}: no checkpoint to resume from", hint="run without --resume to start afresh")
    try:
        state = jsontext.loads((folder / STATE).read_text(), str(folder / STATE))
        weights = load_file(str(folder / "weights.safetensors"))
        flat = load_file(str(folder / "optimizer.safetensors"))
    except Exception as e:
        raise InputError(
            f"{folder}: the checkpoint is damaged ({type(e).__name__}: {e})", hint="delete it and start afresh"
        )
    per_param: dict[int, dict] = {}
    for key, value in flat.items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    for index, step in state.pop("optimizer_steps").items():
        per_param.setdefault(int(index), {})["step"] = torch.tensor(step)
    optimizer = {"state": per_param, "param_groups": state.pop("param_groups")}
    return weights, optimizer, state
