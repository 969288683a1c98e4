"""Whether adapters go together, and with a base: one base for all (two spellings of one model
are one), one shape per module, and the copies of base weights they hold equal to the base's."""

from __future__ import annotations

from loramix.core.adapters import Adapter
from loramix.core.errors import AdapterError


def check_compatible(adapters: list[Adapter], base: str | None = None) -> list[str]:
    """Refuse adapters that do not share a base or module shapes. Two spellings of one base
    (loramix-tiny and its folder, a hub id and its cached snapshot) are one base. With `base` given
    (--base) adapters that record another one are accepted, with a warning returned for each: the
    caller checks their shapes against it. (fan_in_fan_out says how the base stored a weight when the
    adapter was trained, not how A and B are laid out, which is always A (r, in) and B (out, r);
    merging into a base reads the orientation from the base itself.)"""
    from loramix.core.models import same_base

    first, warnings = adapters[0], []
    shapes: dict[str, tuple[tuple[int, int], Adapter]] = {}
    for a in adapters:
        if base is not None and not same_base(a.base, base):
            warnings.append(f"{a.path} records the base {a.base!r}; used with {base} (shapes are checked against it)")
        elif base is None and not same_base(a.base, first.base):
            raise AdapterError(
                f"adapters for different bases: {first.path} was trained on {first.base!r}, {a.path} on {a.base!r}",
                hint="if both name the same model, pass --base BASE (its folder or hub id) to merge them onto it; "
                "every module's shape is checked against it",
            )
        for name, m in a.modules.items():
            seen = shapes.setdefault(name, (m.shape, a))
            if seen[0] != m.shape:
                raise AdapterError(
                    f"module {name} has shape {seen[0]} in {seen[1].path} but {m.shape} in {a.path}",
                    hint="the adapters were trained on different models",
                )
    return warnings


def check_base_copies(adapters: list[Adapter], weight_of, base: str) -> None:
    """Check the copies of base weights the adapters hold against `base` (weight_of(module) -> its
    tensor, or None where the base has none to compare): a copy that differs means the adapter was
    trained on another base (a resized vocabulary, say) and is refused; what cannot be checked is
    said on the log."""

    from loramix.core import log

    for a in adapters:
        unchecked = []
        for name, copy in a.base_copies.items():
            weight = weight_of(name)
            if weight is None:
                unchecked.append(name)
                continue
            if tuple(weight.shape) != tuple(copy.shape):
                why = f"has shape {tuple(copy.shape)}, the base's {tuple(weight.shape)}"
            else:
                gap = float((weight.detach().float() - copy.float()).abs().max())
                if gap <= 1e-3 * max(1.0, float(copy.float().abs().max())):
                    continue
                why = f"differs from the base's by up to {gap:.3g}"
            raise AdapterError(
                f"{a.path}: its copy of {name}.weight {why} ({base})",
                hint="the adapter was trained on another base (a resized vocabulary?); merge it with that base",
            )
        if unchecked:
            log.note(
                f"{a.path}: holds copies of the base's {', '.join(unchecked)} that {base} has no weight to "
                "compare with; they are not used"
            )
        elif a.base_copies:
            log.note(
                f"{a.path}: its copies of {', '.join(a.base_copies)} match {base}; they are not needed and left out"
            )
