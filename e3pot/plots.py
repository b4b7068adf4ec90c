"""Parity plots (predicted against reference), with the error statistics of :mod:`e3pot.metrics`.

Everything here takes plain numpy arrays in eV/atom (energies per atom) and eV/Å (force
components), so that ``e3pot predict --plot`` and the benchmarks draw the same figure. Errors are
prediction − reference; the legends give them in meV/atom and meV/Å.

matplotlib is imported only when a plot is drawn, through its Agg canvas: nothing here switches
the process-wide pyplot backend (a notebook that calls :func:`parity_plot` keeps its own).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from e3pot.metrics import error_stats, stats_by_type  # noqa: F401  (the statistics in the legends)

ENERGY_UNIT = "meV/atom"  # of the errors in the legends
FORCE_UNIT = "meV/Å"


class MissingMatplotlib(ImportError):
    """matplotlib is not installed; the message says how to install it."""


def _figure_class():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingMatplotlib("plotting needs matplotlib, which is not installed: pip install matplotlib") from exc
    return Figure, FigureCanvasAgg


def require_matplotlib() -> None:
    """Raise :class:`MissingMatplotlib` now rather than after a long prediction run."""
    _figure_class()


def _num(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(k % cmap.N) for k in range(n)]


def _panel(ax, pred: np.ndarray, ref: np.ndarray, types: Optional[Sequence[str]], quantity: str,
           unit: str, error_unit: str) -> None:
    """One parity panel: points (coloured by type), the y = x line and MAE/RMSE in the legend, in
    ``error_unit`` (1000 times ``unit``)."""
    ax.set_xlabel(f"reference {quantity} ({unit})")
    ax.set_ylabel(f"predicted {quantity} ({unit})")
    if np.size(pred) == 0:
        ax.text(0.5, 0.5, f"no reference {quantity}", ha="center", va="center", transform=ax.transAxes)
        return
    pred, ref = np.asarray(pred, dtype=float).ravel(), np.asarray(ref, dtype=float).ravel()
    finite = np.isfinite(pred) & np.isfinite(ref)  # NaN or infinite values cannot be drawn: left out
    if not finite.all():
        pred, ref = pred[finite], ref[finite]
        types = None if types is None else np.asarray(types, dtype=object)[finite]
        if pred.size == 0:
            ax.text(0.5, 0.5, f"no finite reference {quantity}", ha="center", va="center", transform=ax.transAxes)
            return
    total = error_stats(pred, ref, 1000.0)
    marker = dict(ls="", marker="o", ms=3 if pred.size < 2000 else 1, alpha=0.7, rasterized=True)
    if types is None:
        ax.plot(ref, pred, **marker, label=f"MAE {_num(total['mae'])}, RMSE {_num(total['rmse'])}")
    else:
        types = np.asarray(types, dtype=object)
        stats = stats_by_type(pred, ref, types, 1000.0)
        for colour, (name, s) in zip(_colours(len(stats)), stats.items()):
            mask = types == name
            ax.plot(ref[mask], pred[mask], **marker, color=colour, label=f"{name}: MAE {_num(s['mae'])}")
        ax.plot([], [], ls="", label=f"all: MAE {_num(total['mae'])}, RMSE {_num(total['rmse'])}")
    lo, hi = min(ref.min(), pred.min()), max(ref.max(), pred.max())
    pad = 0.05 * (hi - lo) or 0.05 * max(abs(lo), 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8, label="y = x")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    ax.grid(True, alpha=0.3)
    ax.legend(title=f"errors in {error_unit}", fontsize="small" if types is None or len(set(types)) <= 8 else "x-small",
              title_fontsize="small", markerscale=2)


def parity_figure(energy_pred: np.ndarray, energy_ref: np.ndarray, forces_pred: np.ndarray,
                  forces_ref: np.ndarray, energy_types: Optional[Sequence[str]] = None,
                  force_types: Optional[Sequence[str]] = None, title: Optional[str] = None):
    """A matplotlib ``Figure`` (Agg canvas) with two parity panels.

    ``energy_pred``/``energy_ref``: energies per atom (eV/atom), one per structure.
    ``forces_pred``/``forces_ref``: force components (eV/Å), flattened.
    ``energy_types``/``force_types``: optional labels (e.g. config_type), one per value, that
    colour the points; each type gets its own legend entry with its MAE (meV/atom, meV/Å).
    Either panel may be empty (no references of that kind).
    """
    Figure, FigureCanvasAgg = _figure_class()
    fig = Figure(figsize=(11, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax_e, ax_f = fig.subplots(1, 2)
    _panel(ax_e, energy_pred, energy_ref, energy_types, "energy per atom", "eV/atom", ENERGY_UNIT)
    _panel(ax_f, forces_pred, forces_ref, force_types, "force components", "eV/Å", FORCE_UNIT)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def parity_plot(path: str, energy_pred: np.ndarray, energy_ref: np.ndarray, forces_pred: np.ndarray,
                forces_ref: np.ndarray, energy_types: Optional[Sequence[str]] = None,
                force_types: Optional[Sequence[str]] = None, title: Optional[str] = None) -> str:
    """Write :func:`parity_figure` (same arguments, eV/atom and eV/Å) to the PNG file ``path`` and
    return ``path``. The file appears complete or not at all (see :func:`e3pot.files.atomic_output`);
    pairs with a NaN or infinite value are left out of the panels."""
    from e3pot.files import atomic_output

    fig = parity_figure(energy_pred, energy_ref, forces_pred, forces_ref, energy_types, force_types, title)
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png")
    return path


def plot_errors(path: str, errors, title: Optional[str] = None) -> str:
    """:func:`parity_plot` of an :class:`e3pot.metrics.Errors` (energy per atom and force components,
    coloured by group when the structures have one) to the PNG file ``path``."""
    data = errors.arrays()
    (e_pred, e_ref, e_type), (f_pred, f_ref, f_type) = data["energy_per_atom"], data["forces"]
    if not errors.typed:
        e_type = f_type = None
    args = (path, e_pred, e_ref, f_pred, f_ref, e_type, f_type)
    return parity_plot(*args, title) if title else parity_plot(*args)
