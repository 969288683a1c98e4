"""What `inspect` reports: an adapter's summary and ‖ΔW‖ grid, two adapters compared per layer,
or a fit-cat α table as a heatmap. Each report's `to_json()` is what `inspect --json` prints."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from loramix.core.adapters import WEIGHTS_NAME, Adapter
from loramix.core.modules import parse
from loramix.inspect.analysis import SignCounts, cosine, delta_inner, delta_norm, sign_conflicts
from loramix.inspect.grid import Grid, grid
from loramix.soup.report import FitReport


@dataclass(frozen=True)
class AdapterSummary:
    path: str
    base: str
    modules: int
    layers: int
    targets: list[str]
    rank: dict  # {"min", "max"}
    lora_alpha: Any
    use_rslora: bool
    scale: dict  # {"min", "max"}
    dtype: str
    parameters: int
    size_bytes: int | None
    delta_norm: Grid
    module_stats: dict[str, dict]  # module -> rank, scale, shape, delta_norm
    problems: list[str]  # why it cannot be merged exactly (empty when it can)
    base_copies: list[str]  # modules whose base weight it also holds

    def to_json(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__}, "delta_norm": self.delta_norm.to_json()}


@dataclass(frozen=True)
class LayerRow:
    layer: str  # the layer index, "-" outside numbered layers, "all" for the whole adapter
    cosine: float | None
    conflict_rate: float | None
    norm_a: float
    norm_b: float


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    density: float
    shared_modules: int
    only_in_a: list[str]
    only_in_b: list[str]
    overall: LayerRow
    layers: list[LayerRow]
    cosine: Grid
    module_stats: dict[str, dict]  # module -> cosine, conflict_rate, norm_a, norm_b

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "density": self.density,
            "shared_modules": self.shared_modules,
            "only_in_a": self.only_in_a,
            "only_in_b": self.only_in_b,
            "overall": asdict(self.overall),
            "layers": [asdict(r) for r in self.layers],
            "cosine": self.cosine.to_json(),
            "module_stats": self.module_stats,
        }


@dataclass(frozen=True)
class CatView:
    """A fit-cat result as `inspect` shows it: the table and its heatmap."""

    path: str
    table: dict  # the table as read (printed as is)
    report: FitReport
    heatmap: Grid

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, **self.table, "heatmap": self.heatmap.to_json()}


def _span(xs: list) -> dict:
    return {"min": min(xs), "max": max(xs)} if xs else {"min": None, "max": None}


def adapter_report(adapter: Adapter) -> AdapterSummary:
    mods = adapter.modules
    norms = {n: delta_norm(m) for n, m in mods.items()}
    g = grid(dict(norms))
    return AdapterSummary(
        path=str(adapter.path),
        base=adapter.base,
        modules=len(mods),
        layers=sum(1 for r in g.rows if r != "-"),
        targets=g.cols,
        rank=_span([m.rank for m in mods.values()]),
        lora_alpha=adapter.config.get("lora_alpha"),
        use_rslora=bool(adapter.config.get("use_rslora")),
        scale=_span([m.scale for m in mods.values()]),
        dtype=str(adapter.dtype).removeprefix("torch.") if mods else "-",
        parameters=adapter.num_parameters,
        size_bytes=(adapter.path / WEIGHTS_NAME).stat().st_size if adapter.path else None,
        delta_norm=g,
        module_stats={
            n: {"rank": m.rank, "scale": m.scale, "shape": list(m.shape), "delta_norm": norms[n]}
            for n, m in mods.items()
        },
        problems=list(adapter.problems),
        base_copies=sorted(adapter.base_copies),
    )


def cat_heatmap(report: FitReport) -> Grid:
    """fit-cat's α table as a grid: layers (or the one global row) down, adapters across; for
    module granularity, adapter × module kind across (for rank granularity, each module's mean over
    its rank slots). None where an adapter has no module."""
    names = [a.name for a in report.adapters]
    if report.granularity not in ("module", "rank"):
        return Grid(list(report.groups), names, report.alpha)
    per_module = dict(zip(report.groups, report.alpha))
    if report.granularity == "rank":
        per_module = slot_means(report.groups, report.alpha, len(names))
    grids = [grid({m: row[i] for m, row in per_module.items()}) for i in range(len(names))]
    cols = [f"{name} {col}" for name, g in zip(names, grids) for col in g.cols]
    values = [[v for g in grids for v in g.values[r]] for r in range(len(grids[0].rows))]
    keep = [j for j in range(len(cols)) if any(row[j] is not None for row in values)]  # kinds an adapter has
    return Grid(grids[0].rows, [cols[j] for j in keep], [[row[j] for j in keep] for row in values])


def slot_means(labels: list[str], alpha: list[list], k: int) -> dict[str, list]:
    """{module: mean α per adapter over its rank slots (None where it has none)} of a rank-slot table."""
    from loramix.soup.table import SLOT_MARK

    values: dict[str, list[list[float]]] = {}
    for label, row in zip(labels, alpha):
        module = label.rpartition(SLOT_MARK)[0]
        cells = values.setdefault(module, [[] for _ in range(k)])
        for i, v in enumerate(row):
            if v is not None:
                cells[i].append(v)
    return {m: [sum(c) / len(c) if c else None for c in cells] for m, cells in values.items()}


def cat_view(path: str, table: dict) -> CatView:
    report = FitReport.from_json(table)
    return CatView(path, table, report, cat_heatmap(report))


@dataclass
class _Sums:
    inner: float = 0.0
    na2: float = 0.0
    nb2: float = 0.0
    signs: SignCounts = field(default_factory=SignCounts)

    def add(self, inner: float, na: float, nb: float, signs: SignCounts) -> None:
        self.inner += inner
        self.na2 += na * na
        self.nb2 += nb * nb
        self.signs.add(signs)

    def absorb(self, other: _Sums) -> None:
        self.inner += other.inner
        self.na2 += other.na2
        self.nb2 += other.nb2
        self.signs.add(other.signs)

    def row(self, label: str) -> LayerRow:
        na, nb = self.na2**0.5, self.nb2**0.5
        return LayerRow(label, cosine(self.inner, na, nb), self.signs.rate, na, nb)


def compare_report(a: Adapter, b: Adapter, density: float, on_module: Callable = lambda *_: None) -> Comparison:
    """Per module and per layer: cosine similarity of the deltas and TIES's sign-conflict rate."""
    shared = sorted(set(a.modules) & set(b.modules))
    per_module: dict[str, dict] = {}
    per_layer: dict[str, _Sums] = {}
    total = _Sums()
    for name in shared:
        ma, mb = a.modules[name], b.modules[name]
        na, nb, inner = delta_norm(ma), delta_norm(mb), delta_inner(ma, mb)
        counts = sign_conflicts(ma, mb, density)
        per_module[name] = {"cosine": cosine(inner, na, nb), "conflict_rate": counts.rate, "norm_a": na, "norm_b": nb}
        layer = parse(name).layer
        per_layer.setdefault("-" if layer is None else str(layer), _Sums()).add(inner, na, nb, counts)
        on_module(name)
    for sums in per_layer.values():
        total.absorb(sums)
    layers = [sums.row(label) for label, sums in sorted(per_layer.items(), key=lambda kv: _layer_key(kv[0]))]
    return Comparison(
        a=str(a.path),
        b=str(b.path),
        density=density,
        shared_modules=len(shared),
        only_in_a=sorted(set(a.modules) - set(b.modules)),
        only_in_b=sorted(set(b.modules) - set(a.modules)),
        overall=total.row("all"),
        layers=layers,
        cosine=grid({n: v["cosine"] for n, v in per_module.items()}),
        module_stats=per_module,
    )


def _layer_key(label: str) -> tuple[int, int]:
    return (1, 0) if label == "-" else (0, int(label))
