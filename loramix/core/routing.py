"""A routed mixture of frozen skill LoRAs: every token picks its own blend of the skills at every
wrapped module (the mixture-of-experts baseline of LoRA Soups, and Arrow's data-free routing).

No standard adapter can hold a router, so a mixture is a loramix folder (docs/architecture.md,
Routed mixtures) that `loramix eval` loads:

    FOLDER/loramix_routed.json   kind, base, experts, modules, top_k, temperature
    FOLDER/router.safetensors    "<module>.weight" (k, in) and "<module>.bias" (k,) per module
    FOLDER/experts/<i>/          expert i's adapter, copied unchanged (PEFT's layout)

For a token x entering module m, with expert i's LoRA ΔW_i = s_i · B_i · A_i:

    learned: g(x) = softmax(W_m x + b_m)                        (the MoE baseline's router)
    arrow:   g(x) = softmax(|W_m x| / T) over its top_k entries  (W_m's row i: ΔW_i's top right
             singular vector; the other entries are 0)
    y = W0 x + Σ_i g_i(x) · ΔW_i x

An expert without module m takes no share there (its logit is -inf).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from loramix.core import jsontext
from loramix.core.adapter_rules import ROUTED_MANIFEST
from loramix.core.errors import InputError

MANIFEST = ROUTED_MANIFEST
ROUTER_FILE = "router.safetensors"
EXPERTS = "experts"
FORMAT = "loramix-routed"
KINDS = ("learned", "arrow")


class RoutedDelta(nn.Module):
    """The routed sum of k frozen LoRAs at one linear: delta(x) = Σ_i g_i(x) · s_i · B_i A_i x."""

    def __init__(self, modules: list, kind: str = "learned", top_k: int | None = None, temperature: float = 1.0):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        present = [(i, m) for i, m in enumerate(modules) if m is not None]
        k, n_in = len(modules), present[0][1].shape[1]
        self.kind, self.top_k, self.temperature = kind, top_k or k, temperature
        self.register_buffer("A", torch.cat([m.A.float() for _, m in present]))  # (R, in)
        self.register_buffer("B", torch.cat([m.B.float() for _, m in present], dim=1))  # (out, R)
        self.register_buffer("scale", torch.cat([torch.full((m.rank,), float(m.scale)) for _, m in present]))
        self.register_buffer("owner", torch.cat([torch.full((m.rank,), i, dtype=torch.long) for i, m in present]))
        self.register_buffer("present", torch.tensor([m is not None for m in modules]))
        learned = kind == "learned"  # arrow's routers are set from the experts, never trained
        self.weight = nn.Parameter(torch.zeros(k, n_in), requires_grad=learned)  # zeros: 1/k each to start
        self.bias = nn.Parameter(torch.zeros(k), requires_grad=learned)

    A: torch.Tensor
    B: torch.Tensor
    scale: torch.Tensor
    owner: torch.Tensor
    present: torch.Tensor

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """(..., k) routing weights of each token; each row sums to 1."""
        logits = nn.functional.linear(x, self.weight, self.bias)
        if self.kind == "arrow":
            logits = logits.abs() / self.temperature
        logits = logits.masked_fill(~self.present, float("-inf"))
        if self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.softmax(logits, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.A.dtype)
        coef = self.gates(x).index_select(-1, self.owner) * self.scale  # (..., R)
        return nn.functional.linear(nn.functional.linear(x, self.A) * coef, self.B)


def top_right_vector(module) -> torch.Tensor:
    """The unit vector x that ΔW = s·B·A stretches most (its top right singular vector), from the
    (r, r) core instead of the (out, in) product: A = Rᵀ Qᵀ, so B·A = (B Rᵀ) Qᵀ."""
    q, r = torch.linalg.qr(module.A.float().T)  # A.T = q r: q (in, r), r (r, r)
    _, _, vh = torch.linalg.svd(module.B.float() @ r.T, full_matrices=False)
    return q @ vh[0]


def build(adapters: list, kind: str = "learned", top_k: int | None = None, temperature: float = 1.0) -> dict:
    """{module: RoutedDelta} over every module any adapter has; arrow's routers are set from the
    adapters (rows: each expert's top right singular vector), learned ones start at zero."""
    names = sorted({name for a in adapters for name in a.modules})
    deltas = {}
    for name in names:
        modules = [a.modules.get(name) for a in adapters]
        delta = RoutedDelta(modules, kind, top_k, temperature)
        if kind == "arrow":
            with torch.no_grad():
                for i, m in enumerate(modules):
                    if m is not None:
                        delta.weight[i] = top_right_vector(m)
        deltas[name] = delta
    return deltas


class Routers(nn.Module):
    """Every module's RoutedDelta, registered on a model (`model.loramix_routers`) so that its
    router weights are the model's trainable parameters; keys are module names with '/' for '.'."""

    def __init__(self, deltas: dict[str, RoutedDelta]):
        super().__init__()
        self.deltas = nn.ModuleDict({name.replace(".", "/"): d for name, d in deltas.items()})

    def items(self):
        return [(key.replace("/", "."), d) for key, d in self.deltas.items()]


def linear_of(model: nn.Module, name: str) -> nn.Module:
    """The base linear at module path `name` (under a PEFT wrapper, its base_layer)."""
    get_base = getattr(model, "get_base_model", None)
    root = get_base() if callable(get_base) else model
    module = root.get_submodule(name)
    return getattr(module, "base_layer", module)


def attach(model: nn.Module, deltas: dict[str, RoutedDelta]) -> list:
    """Add each delta to its base linear's output (a forward hook); returns the hooks' handles."""

    def hook(delta: RoutedDelta):
        return lambda _module, inputs, output: output + delta(inputs[0]).to(output.dtype)

    return [linear_of(model, name).register_forward_hook(hook(d)) for name, d in deltas.items()]


def detach(handles: list) -> None:
    for handle in handles:
        handle.remove()


@dataclass
class Manifest:
    kind: str
    base: str
    experts: list[str]  # the skill adapters' names, in router order
    modules: list[str]
    top_k: int
    temperature: float
    version: str | None = None
    extra: dict = field(default_factory=dict)  # how it was made (the fit's report)

    def to_json(self) -> dict:
        return {
            "loramix": self.version,
            "format": FORMAT,
            "format_version": 1,
            "kind": self.kind,
            "base": self.base,
            "experts": self.experts,
            "modules": self.modules,
            "top_k": self.top_k,
            "temperature": self.temperature,
            **self.extra,
        }


def is_routed(path: Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def expert_folder(folder: Path, i: int) -> Path:
    return Path(folder) / EXPERTS / str(i)


def save(folder: Path, manifest: Manifest, adapters: list, deltas: dict[str, RoutedDelta]) -> None:
    """Write a mixture into `folder` (an empty temporary folder that the caller installs)."""
    from safetensors.torch import save_file

    from loramix.core.adapter_rules import CONFIG_NAME
    from loramix.core.adapters import WEIGHTS_NAME

    for i, a in enumerate(adapters):
        target = expert_folder(folder, i)
        target.mkdir(parents=True)
        for file in (CONFIG_NAME, WEIGHTS_NAME):
            shutil.copyfile(Path(a.path) / file, target / file)
    tensors = {}
    for name, d in deltas.items():
        tensors[f"{name}.weight"] = d.weight.detach().float().cpu().contiguous()
        tensors[f"{name}.bias"] = d.bias.detach().float().cpu().contiguous()
    save_file(tensors, str(Path(folder) / ROUTER_FILE))
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=1) + "\n")


def read_manifest(folder: Path) -> Manifest:
    file = Path(folder) / MANIFEST
    try:
        doc = jsontext.loads(file.read_text(encoding="utf-8"), str(file))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{file}: cannot be read as JSON ({e})")
    keys = ("kind", "base", "experts", "modules", "top_k", "temperature")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or any(k not in doc for k in keys):
        raise InputError(f"{file}: not a loramix routed mixture", hint=f"it needs format {FORMAT!r} and {keys}")
    if doc["kind"] not in KINDS:
        raise InputError(f"{file}: kind {doc['kind']!r} is unknown", hint=f"one of {', '.join(KINDS)}")
    if not isinstance(doc["experts"], list) or len(doc["experts"]) < 2:
        raise InputError(f"{file}: a mixture needs at least two experts")
    top_k = doc["top_k"]
    if not isinstance(top_k, int) or not 1 <= top_k <= len(doc["experts"]):
        raise InputError(f"{file}: top_k {top_k!r} must be a whole number from 1 to {len(doc['experts'])}")
    if not isinstance(doc["temperature"], (int, float)) or not doc["temperature"] > 0:
        raise InputError(f"{file}: temperature {doc['temperature']!r} must be a positive number")
    return Manifest(
        doc["kind"], str(doc["base"]), list(doc["experts"]), list(doc["modules"]), top_k, float(doc["temperature"])
    )


def read_fit(folder: Path) -> dict:
    """The report of the fit that made the mixture (fit-cat's JSON, kept in the manifest)."""
    file = Path(folder) / MANIFEST
    read_manifest(folder)
    doc = jsontext.loads(file.read_text(encoding="utf-8"), str(file)).get("fit")
    keys = ("granularity", "param", "groups", "alpha", "adapters")
    if not isinstance(doc, dict) or any(k not in doc for k in keys):
        raise InputError(f"{file}: holds no fit report", hint="fit-cat -m moe or -m arrow writes one")
    return doc


def read_experts(folder: Path, base: str | None = None) -> list:
    """The mixture's expert adapters, read and checked like any adapter."""
    from loramix.core.adapters import read_adapter

    manifest = read_manifest(folder)
    return [read_adapter(expert_folder(folder, i), base=base) for i in range(len(manifest.experts))]


def load(folder: Path, base: str | None = None) -> tuple[Manifest, list, dict[str, RoutedDelta]]:
    """(manifest, experts, {module: RoutedDelta}) of a saved mixture, its routers checked against
    the experts' modules and shapes."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    manifest = read_manifest(folder)
    experts = read_experts(folder, base)
    deltas = build(experts, manifest.kind, manifest.top_k, manifest.temperature)
    if sorted(deltas) != sorted(manifest.modules):
        raise InputError(f"{folder / MANIFEST}: its modules are not the ones its experts have")
    file = folder / ROUTER_FILE
    try:
        tensors = load_file(str(file))
    except (OSError, SafetensorError) as e:
        raise InputError(f"{file}: cannot be read ({e})")
    for name, d in deltas.items():
        for part, param in (("weight", d.weight), ("bias", d.bias)):
            t = tensors.get(f"{name}.{part}")
            if t is None or t.shape != param.shape or not torch.isfinite(t).all():
                raise InputError(f"{file}: {name}.{part} is missing, not of shape {tuple(param.shape)} or not finite")
            with torch.no_grad():
                param.copy_(t)
    return manifest, experts, deltas
