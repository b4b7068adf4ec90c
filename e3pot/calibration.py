"""How well predicted uncertainties (standard deviations) match the observed errors.

Everything here takes plain numpy arrays: errors (prediction − reference) and predicted standard
deviations in the same unit, eV/atom for energies per atom and eV/Å for forces. The statistics are
the rank correlation between |error| and std (:func:`spearman`), how far the errors are from the
Gaussians the stds describe (:func:`miscalibration_area`), the factor that would rescale the stds
to fit (:func:`fit_scale`) and the errors binned by std (:func:`binned`), which
:func:`plot_calibration` draws against the ideal y = x.

Forces: the std of an atom's force is usually sqrt(σx² + σy² + σz²), and the norm of a 3D Gaussian
error does not follow the 1-D Gaussian that :func:`miscalibration_area` tests. So forces are
compared component by component: :func:`force_components` gives the (3N,) component errors and the
per-component std, std_atom / sqrt(3) (the three components taken as equally uncertain).

    unc = UncertaintyErrors()
    unc.add(e_pred - e_ref, e_std, len(atoms), f_pred - f_ref, f_std)
    unc.metrics()["forces"]["miscalibration_area"]  # 0 = calibrated, 0.5 = as bad as it gets
"""
from __future__ import annotations

import math
import statistics
from typing import Dict, List, Optional, Tuple

import numpy as np

N_GRID = 101  # expected proportions p in [0, 1] for the miscalibration area
QUANTITIES = {"energy_per_atom": "meV/atom", "forces": "meV/Å"}  # units of report() and the plot
WIDTHS = (10, 12, 10, 10)  # of the Spearman, area, RMSE and RMS std columns of report()


def _vector(values) -> np.ndarray:
    return np.asarray(values, dtype=float).ravel()


def _pair(errors, std) -> Tuple[np.ndarray, np.ndarray]:
    """``errors`` and ``std`` as float vectors of one length, std checked to be ≥ 0."""
    e, s = _vector(errors), _vector(std)
    if e.shape != s.shape:
        raise ValueError(f"{e.size} errors for {s.size} standard deviations; give one std per error")
    if np.any(s < 0):
        raise ValueError("standard deviations must not be negative")
    return e, s


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``; tied values share the average of their ranks."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # the rank of the last member of each group of equal values
    return (last - (counts - 1) / 2.0)[inverse.ravel()]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two 1-D arrays of one length (ties get average ranks).

    NaN when there are fewer than 2 values, when either array is constant or holds a NaN.
    """
    a, b = _vector(a), _vector(b)
    if a.shape != b.shape:
        raise ValueError(f"spearman needs arrays of one length, got {a.size} and {b.size}")
    if a.size < 2 or np.isnan(a).any() or np.isnan(b).any():
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = math.sqrt(float((ra ** 2).sum()) * float((rb ** 2).sum()))
    return float((ra * rb).sum() / norm) if norm > 0 else float("nan")


def _two_sided_quantiles(p: np.ndarray) -> np.ndarray:
    """z with P(|X| ≤ z) = p for X ~ N(0, 1): Φ⁻¹((1 + p) / 2); infinite at p = 1."""
    normal = statistics.NormalDist()
    return np.array([math.inf if q >= 1.0 else normal.inv_cdf((1.0 + q) / 2.0) for q in p])


def miscalibration_area(errors: np.ndarray, std: np.ndarray) -> float:
    """Area between the observed and the expected proportion of errors inside Gaussian intervals.

    For each p of a grid of 101 points in [0, 1] the observed proportion is the fraction of i with
    |e_i| ≤ s_i·z_p, z_p = Φ⁻¹((1 + p)/2); the area is ∫ |observed(p) − p| dp (trapezoid rule).
    0 for perfectly calibrated stds, at most 0.5. ``errors`` may be signed or absolute; ``std``
    (≥ 0) in the same unit. Vectors (forces) go through :func:`force_components` first. NaN when
    there are no values.
    """
    e, s = _pair(errors, std)
    if e.size == 0:
        return float("nan")
    a = np.abs(e)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(a == 0, 0.0, a / s)  # a zero std with a non-zero error: infinite
    p = np.linspace(0.0, 1.0, N_GRID)
    observed = np.searchsorted(np.sort(ratio), _two_sided_quantiles(p), side="right") / ratio.size
    gap = np.abs(observed - p)
    return float(((gap[1:] + gap[:-1]) / 2.0 * np.diff(p)).sum())


def force_components(errors_xyz: np.ndarray, std_atom: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Force errors ``errors_xyz`` (n, 3) and per-atom stds ``std_atom`` (n,) (the root of the sum of
    the three component variances) as the (3n,) component errors and their per-component stds,
    ``std_atom / sqrt(3)`` repeated for x, y and z, for the 1-D Gaussian statistics of this module."""
    err = np.asarray(errors_xyz, dtype=float)
    std = _vector(std_atom)
    if err.ndim != 2 or err.shape[1] != 3:
        raise ValueError(f"force errors must have shape (n_atoms, 3), got {err.shape}")
    if std.size != err.shape[0]:
        raise ValueError(f"{std.size} force stds for {err.shape[0]} atoms; give one std per atom")
    return err.reshape(-1), np.repeat(std / math.sqrt(3.0), 3)


def fit_scale(errors: np.ndarray, std: np.ndarray) -> float:
    """The α that maximises the Gaussian likelihood of ``errors`` with stds α·``std``:
    sqrt(mean(e² / s²)), each s floored at 1e-12 × max(s) so that a zero std does not divide by 0.

    Multiply the stds by α to calibrate them (on average). Raises ``ValueError`` when there are no
    values or every std is zero.
    """
    e, s = _pair(errors, std)
    if e.size == 0:
        raise ValueError("fit_scale needs at least one error and std; got none")
    top = float(s.max())
    if not top > 0:
        raise ValueError("fit_scale: every standard deviation is zero (or NaN); there is no scale to fit")
    s = np.maximum(s, 1e-12 * top)
    return float(np.sqrt(np.mean((e / s) ** 2)))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if np.size(x) else float("nan")


def binned(errors: np.ndarray, std: np.ndarray, n_bins: int = 10) -> Dict[str, np.ndarray]:
    """The errors sorted by std and cut into ``n_bins`` bins of equal count (within one; empty bins
    dropped): ``std`` the RMS predicted std of each bin, ``rmse`` its RMS observed error, ``count``
    its size. Calibrated stds give rmse ≈ std."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    e, s = _pair(errors, std)
    order = np.argsort(s, kind="stable")
    bins = [b for b in np.array_split(order, n_bins) if b.size]
    return {"std": np.array([_rms(s[b]) for b in bins]), "rmse": np.array([_rms(e[b]) for b in bins]),
            "count": np.array([b.size for b in bins], dtype=int)}


def _plain(value: float) -> Optional[float]:
    return None if value is None or not math.isfinite(value) else float(value)


def summary(errors: np.ndarray, std: np.ndarray) -> Dict[str, Optional[float]]:
    """``n``, ``spearman`` (of |error| and std), ``miscalibration_area``, ``rmse`` (of the errors) and
    ``rms_std``, in the unit of the inputs; plain numbers (``None`` for NaN), ready for JSON."""
    e, s = _pair(errors, std)
    return {"n": int(e.size), "spearman": _plain(spearman(np.abs(e), s)),
            "miscalibration_area": _plain(miscalibration_area(e, s)), "rmse": _plain(_rms(e)),
            "rms_std": _plain(_rms(s))}


def _concat(parts: List[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0)


class UncertaintyErrors:
    """Errors next to predicted stds, structure by structure: energies per atom (eV/atom) and force
    components (eV/Å, see :func:`force_components`).

    :meth:`add` one structure at a time; :meth:`metrics` gives the :func:`summary` of each quantity,
    :meth:`report` a printed table, :func:`plot_calibration` the figure.
    """

    def __init__(self):
        self.e_err: List[float] = []  # eV/atom
        self.e_std: List[float] = []  # eV/atom
        self.f_err: List[np.ndarray] = []  # (3n,) eV/Å
        self.f_std: List[np.ndarray] = []  # (3n,) eV/Å

    def add(self, energy_error_eV: Optional[float], energy_std_eV: Optional[float], n_atoms: int,
            forces_error: Optional[np.ndarray] = None, forces_std: Optional[np.ndarray] = None) -> None:
        """One structure: its energy error and predicted energy std (eV, stored per atom), its size,
        and optionally its force errors (n_atoms, 3) and per-atom force stds (n_atoms,) in eV/Å.
        ``None`` for the energy pair leaves the energy out."""
        if n_atoms < 1:
            raise ValueError(f"a structure needs at least one atom, got n_atoms={n_atoms}")
        if (energy_error_eV is None) != (energy_std_eV is None):
            raise ValueError("give both the energy error and its std, or neither")
        if (forces_error is None) != (forces_std is None):
            raise ValueError("give both the force errors and their stds, or neither")
        if forces_error is not None:
            err, std = force_components(forces_error, forces_std)
            if err.size != 3 * n_atoms:
                raise ValueError(f"force errors for {err.size // 3} atoms in a structure of {n_atoms}")
            if np.any(std < 0):
                raise ValueError("standard deviations must not be negative")
        if energy_error_eV is not None:
            if energy_std_eV < 0:
                raise ValueError(f"the energy std must not be negative, got {energy_std_eV}")
            self.e_err.append(float(energy_error_eV) / n_atoms)
            self.e_std.append(float(energy_std_eV) / n_atoms)
        if forces_error is not None:
            self.f_err.append(err)
            self.f_std.append(std)

    def arrays(self) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
        """(errors, stds) of each quantity that has values: ``energy_per_atom`` (eV/atom) and
        ``forces`` (components, eV/Å)."""
        out = {}
        if self.e_err:
            out["energy_per_atom"] = (np.array(self.e_err), np.array(self.e_std))
        if self.f_err:
            out["forces"] = (_concat(self.f_err), _concat(self.f_std))
        return out

    def metrics(self) -> Dict[str, dict]:
        """The :func:`summary` of each quantity of :meth:`arrays` (eV/atom, eV/Å)."""
        return {q: summary(e, s) for q, (e, s) in self.arrays().items()}

    def report(self, metrics: Optional[dict] = None) -> str:
        """The metrics as a markdown table, RMSE and RMS std in meV/atom and meV/Å ("" when empty)."""
        metrics = self.metrics() if metrics is None else metrics
        rows = []
        for q, name in (("energy_per_atom", "energy / atom"), ("forces", "forces")):
            m = metrics.get(q)
            if m:
                cells = [_cell(m["spearman"], 3), _cell(m["miscalibration_area"], 3),
                         _cell(m["rmse"], 3, 1000.0), _cell(m["rms_std"], 3, 1000.0)]
                rows.append(f"| {name:<13} | {m['n']:>8} | " + " | ".join(c.rjust(w) for c, w in zip(cells, WIDTHS))
                            + f" | {QUANTITIES[q]:<8} |")
        if not rows:
            return ""
        head = ("| quantity      |        n |   Spearman | miscal. area |       RMSE |    RMS std | unit     |\n"
                "|---|---:|---:|---:|---:|---:|---|")
        return head + "\n" + "\n".join(rows)


def _cell(value: Optional[float], digits: int, scale: float = 1.0) -> str:
    return "-" if value is None else f"{scale * value:.{digits}f}"


def _legend(stats: dict) -> str:
    rho, area = stats["spearman"], stats["miscalibration_area"]
    rho = "n/a" if rho is None else f"{rho:.2f}"
    area = "n/a" if area is None else f"{area:.2f}"
    return f"Spearman ρ = {rho}, miscalibration area = {area} (n = {stats['n']})"


def _panel(ax, data: Optional[Tuple[np.ndarray, np.ndarray]], quantity: str, unit: str) -> None:
    """One calibration panel: RMS error against RMS std per bin (in ``unit``, 1000 × the inputs')."""
    ax.set_xlabel(f"RMS predicted std ({unit})")
    ax.set_ylabel(f"RMS observed error ({unit})")
    ax.set_title(quantity)
    if data is None or data[0].size == 0:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    errors, std = data
    b = binned(errors, std, 10)
    x, y = 1000.0 * b["std"], 1000.0 * b["rmse"]
    shown = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)  # a log axis cannot show 0
    if not shown.any():
        ax.text(0.5, 0.5, "no data (no positive std and error)", ha="center", va="center", transform=ax.transAxes)
        return
    x, y = x[shown], y[shown]
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.plot(x, y, ls="", marker="o", ms=5, label=_legend(summary(errors, std)))
    lo, hi = min(x.min(), y.min()) / 1.5, max(x.max(), y.max()) * 1.5
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 1, 2, 5, 10, 20, ... rather than 2×10¹
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(NullFormatter())  # minor labels collide on a short log axis
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")


def plot_calibration(path: str, errors: UncertaintyErrors, title: Optional[str] = None) -> None:
    """Write the calibration figure of ``errors`` to the PNG file ``path``: energy per atom and
    force components side by side, each the RMS observed error against the RMS predicted std of
    10 bins of equal count (meV/atom, meV/Å, log-log), with y = x for calibrated stds. The file
    appears complete or not at all."""
    from e3pot.files import atomic_output
    from e3pot.plots import _figure_class

    Figure, FigureCanvasAgg = _figure_class()
    fig = Figure(figsize=(11, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax_e, ax_f = fig.subplots(1, 2)
    data = errors.arrays()
    _panel(ax_e, data.get("energy_per_atom"), "energy per atom", QUANTITIES["energy_per_atom"])
    _panel(ax_f, data.get("forces"), "force components", QUANTITIES["forces"])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png")
