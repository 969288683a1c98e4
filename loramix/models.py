"""Find and load base models: a local folder, a hub name (only where the hub is reachable), or a
model bundled with loramix."""

from __future__ import annotations

from pathlib import Path

from loramix.errors import InputError


def resolve_base(name: str) -> Path:
    """A local folder holding the base model `name` (a path, or a hub name fetched when online)."""
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise InputError(f"{path}: not a model folder (no config.json)")
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as e:
        raise InputError(
            f"base model {name!r}: not a local folder, and the hub could not provide it ({type(e).__name__})",
            hint="pass the path of a local copy of the model",
        )
