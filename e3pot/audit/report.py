"""The result of an audit: one :class:`Check` per measured error, and the table that prints them."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterator, List


@dataclass(frozen=True)
class Check:
    """One measured error against its tolerance.

    ``error`` is NaN when the measurement itself failed (the model returned NaN, the atoms of an
    MD run collided); ``note`` then says why. NaN never passes.
    """

    name: str  # "rotation: forces", "finite differences: stress", ...
    structure: str
    dtype: str
    error: float
    tolerance: float
    unit: str  # "relative", "eV/atom", "eV", "eV/Å", "meV/atom"
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance  # False for NaN

    def to_dict(self) -> Dict[str, object]:
        out = asdict(self)
        out["error"] = self.error if math.isfinite(self.error) else None  # strict JSON has no NaN
        out["passed"] = self.passed
        return out


@dataclass
class AuditReport:
    """The checks of one audit, in the order they ran, and notes on what could not be checked."""

    model: str
    checks: List[Check] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Check]:
        return iter(self.checks)

    def __len__(self) -> int:
        return len(self.checks)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failed(self) -> List[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> Dict[str, object]:
        return {"model": self.model, "passed": self.passed, "checks": [c.to_dict() for c in self.checks],
                "notes": list(self.notes)}

    def table(self) -> str:
        """A markdown table of every check, then a summary line and the notes."""
        head = ["check", "structure", "dtype", "error", "tolerance", "unit", "result"]
        rows = [[c.name, c.structure, c.dtype, f"{c.error:.2e}", f"{c.tolerance:.1e}", c.unit,
                 "PASS" if c.passed else "FAIL"] for c in self.checks]
        widths = [max([len(h)] + [len(r[k]) for r in rows]) for k, h in enumerate(head)]
        numeric = {3, 4}

        def line(cells: List[str]) -> str:
            return "| " + " | ".join(c.rjust(w) if k in numeric else c.ljust(w)
                                     for k, (c, w) in enumerate(zip(cells, widths))) + " |"

        rule = "|" + "|".join(("-" * (w + 1) + ":") if k in numeric else "-" * (w + 2)
                              for k, w in enumerate(widths)) + "|"
        lines = [line(head), rule] + [line(r) for r in rows]
        n_failed = len(self.failed)
        lines.append("")
        lines.append(f"{len(self.checks)} checks: {len(self.checks) - n_failed} passed, {n_failed} failed")
        for c in self.failed:
            if c.note:
                lines.append(f"  {c.name} ({c.structure}, {c.dtype}): {c.note}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)
