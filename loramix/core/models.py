"""Find and load base models: the bundled loramix-tiny, a local folder, or a hub name (only where
the hub is reachable); tokenizer, dtype, device, threads and 4-bit (nf4) loading."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from loramix.core.errors import InputError, LoramixError

BUNDLED = "loramix-tiny"


class DType(str, Enum):
    """--dtype: auto is float32 on a CPU, bfloat16 on a GPU that has it, else float16."""

    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


DTYPES = tuple(d.value for d in DType)


def quiet_libraries() -> None:
    """Keep library chatter off stderr (loading bars, an optional-kernel notice, deprecations that
    are the libraries' own business); loramix reports progress itself."""
    import logging
    import warnings

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def bundled_path() -> Path:
    return Path(__file__).resolve().parents[1] / "zoo" / BUNDLED


def resolve_base(name: str) -> Path:
    """A local folder holding the base model `name` (loramix-tiny, a path, or a hub name fetched when online)."""
    if name == BUNDLED:
        return bundled_path()
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
            hint="pass the path of a local copy of the model, or loramix-tiny",
        )


def local_folder(name: str) -> Path | None:
    """The folder `name` names on this machine without asking the hub (the bundled model's for
    loramix-tiny), or None."""
    if name == BUNDLED:
        return bundled_path()
    path = Path(name).expanduser()
    return path if path.exists() else None


def base_record(name: str) -> str:
    """How an adapter records its base: the bundled name, an absolute local path, or the hub name."""
    if name == BUNDLED:
        return BUNDLED
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def base_identity(name: str) -> str:
    """What a recorded base name points to, so that two spellings of one model compare equal:
    'loramix-tiny' and the bundled folder are one; a local folder is its resolved path, or its hub
    id when it is a snapshot in the hub's cache (.../models--org--name/snapshots/REV); a name that
    is no local folder is a hub id."""
    if name == BUNDLED:
        return str(bundled_path().resolve())
    path = Path(name).expanduser()
    if path.exists():
        resolved = path.resolve()
        parts = resolved.parts
        for i, part in enumerate(parts[:-2]):
            if part.startswith("models--") and parts[i + 1] == "snapshots":
                return "hub:" + part.removeprefix("models--").replace("--", "/")
        return str(resolved)
    return "hub:" + name.strip().rstrip("/")


def same_base(a: str, b: str) -> bool:
    return a == b or base_identity(a) == base_identity(b)


def base_of(adapters: list, given: str | None) -> str:
    """The base to load: --base, else the one the adapters record (else the bundled model).
    (check_compatible says when --base is not the adapters' own.)"""
    return given if given is not None else adapters[0].base if adapters else BUNDLED


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device}: not a device name", hint="use auto, cpu, cuda or cuda:N")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: no CUDA device is available here", hint="use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise InputError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type != "cpu":
        raise InputError(f"--device {device}: only cpu and cuda devices are supported")
    return device


def pick_dtype(dtype: str, device: str):
    """auto: float32 on a CPU, bfloat16 on a GPU that has it, else float16."""
    import torch

    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype}: unknown", hint=f"choose one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def set_threads(threads: int | None) -> int:
    """Use `threads` CPU threads for torch (default: one per available core); returns the count."""
    import os

    import torch

    if threads is not None and threads < 1:
        raise InputError(f"--threads {threads}: must be at least 1")
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    return threads


def setup(device: str, dtype: str, load_in_4bit: bool, threads: int | None):
    """(device, torch dtype, thread count) for a run, refusing what this machine cannot do; under a
    launcher (torchrun, accelerate launch) each process takes its own GPU and joins the group."""
    from loramix.core import dist

    device = pick_device(dist.local_device(device))
    torch_dtype = pick_dtype(dtype, device)
    if load_in_4bit:
        check_4bit(device)
    dist.start()
    return device, torch_dtype, set_threads(threads)


def check_4bit(device: str) -> None:
    """Raise with the reason if bitsandbytes cannot run 4-bit layers on `device`."""
    import importlib

    try:
        importlib.import_module("bitsandbytes")
    except Exception as e:  # an ImportError, or a broken native library
        raise LoramixError(
            f"--load-in-4bit: bitsandbytes cannot be loaded here ({type(e).__name__}: {e})",
            hint="install bitsandbytes>=0.46, or train without --load-in-4bit",
            exit_code=2,
        )
    from importlib.metadata import version

    major, minor = (int(x) for x in version("bitsandbytes").split(".")[:2])
    if device == "cpu" and (major, minor) < (0, 46):
        raise LoramixError(
            f"--load-in-4bit on a CPU needs bitsandbytes>=0.46 (found {version('bitsandbytes')})",
            hint="upgrade bitsandbytes, or train without --load-in-4bit",
            exit_code=2,
        )


def load_tokenizer(path: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise InputError(f"{path}: its tokenizer cannot be loaded ({type(e).__name__}: {e})")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    path: Path, dtype, device: str, load_in_4bit: bool = False, trust_remote_code: bool = False, shardable: bool = False
):
    """A causal LM from a local folder, in `dtype` on `device` (4-bit nf4 weights if asked).
    `shardable` (FSDP will shard it): 4-bit weights are stored in `dtype` rather than uint8, so that
    they can be sharded, and full-precision weights stay on the CPU until each process moves its
    shards to `device` (core.dist.shard_layers)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code, "use_safetensors": True}  # never unpickle
    if load_in_4bit:
        check_4bit(device)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            **({"bnb_4bit_quant_storage": dtype} if shardable else {}),
        )
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise InputError(
                f"{path}: this model needs its own code to load",
                hint="pass --trust-remote-code if you trust the code in that folder",
            )
        raise InputError(f"{path}: cannot be loaded as a causal language model ({e})")
    except OSError:
        if not list(Path(path).glob("*.safetensors")):
            raise InputError(
                f"{path}: has no safetensors weights (loramix never loads pickled .bin files)",
                hint="convert the weights to safetensors first",
            )
        raise
    if load_in_4bit:
        _check_quantized(model, path)
        return model
    if shardable:
        return model
    return model.to(device)  # type: ignore[arg-type]  # transformers' to() is typed for dtypes only


def _check_quantized(model, path: Path) -> None:
    """4-bit loading replaces only the linear classes bitsandbytes knows; a model built of its own
    (Falcon's FalconLinear) would stay in full precision while everything said 4-bit."""
    from bitsandbytes.nn import Linear4bit

    if not any(isinstance(m, Linear4bit) for m in model.modules()):
        kinds = sorted({type(m).__name__ for m in model.modules() if isinstance(m, __import__("torch").nn.Linear)})
        raise InputError(
            f"{path}: --load-in-4bit quantized none of its layers (bitsandbytes replaces torch Linear layers; this "
            f"model's are {', '.join(kinds) or 'of no linear kind'})",
            hint="drop --load-in-4bit for this base",
        )
