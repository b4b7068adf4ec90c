"""Errors of predictions against reference labels: how ``e3pot predict`` and the benchmarks score a model.

Inputs are in eV, eV/atom and eV/Å; the metrics are in meV, meV/atom and meV/Å. An error is
prediction − reference. For each quantity (``energy`` per structure, ``energy_per_atom``, every
``forces`` component) the metrics are the count ``n``, ``mae``, ``rmse`` and the mean signed error
``mean``, overall and per group (the value of an info key such as ``config_type``). A structure
whose reference energy or any reference force component is NaN or infinite is left out (its energy
and its forces) and counted.

    errors = score(model, iter_labelled("test.npz", LabelSpec(energy_unit="kcal/mol")))
    errors.metrics()["overall"]["forces"]["mae"]  # meV/Å
"""
from __future__ import annotations

import collections
import itertools
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

QUANTITIES = {"energy": "meV", "energy_per_atom": "meV/atom", "forces": "meV/Å"}  # the metrics' units
NO_GROUP = "(none)"  # the group of structures without the key, when others have it


def error_stats(pred: np.ndarray, ref: np.ndarray, scale: float = 1.0) -> Optional[Dict[str, float]]:
    """``n``, ``mae``, ``rmse`` and ``mean`` (signed, pred − ref) of the errors, times ``scale``;
    ``None`` when there are no values.

    With eV inputs and ``scale=1000`` the results are in meV (per atom, per Å: as the inputs).
    """
    err = scale * (np.asarray(pred, dtype=float).ravel() - np.asarray(ref, dtype=float).ravel())
    if err.size == 0:
        return None
    return {"n": int(err.size), "mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean())),
            "mean": float(err.mean())}


def stats_by_type(pred: np.ndarray, ref: np.ndarray, types: Sequence[str],
                  scale: float = 1.0) -> Dict[str, Optional[Dict[str, float]]]:
    """:func:`error_stats` for each distinct value of ``types`` (one per point), in order of first
    appearance."""
    types = np.asarray(types, dtype=object)
    if len(types) != np.size(pred):
        raise ValueError(f"{len(types)} types for {np.size(pred)} values; give one type per value")
    pred, ref = np.asarray(pred, dtype=float).ravel(), np.asarray(ref, dtype=float).ravel()
    order = dict.fromkeys(types.tolist())
    return {name: error_stats(pred[types == name], ref[types == name], scale) for name in order}


def nonfinite_labels(energy, forces) -> List[str]:
    """The reference labels (``energy``, ``forces``) that hold a NaN or an infinity."""
    return [name for name, value in (("energy", energy), ("forces", forces))
            if value is not None and not np.all(np.isfinite(np.asarray(value, dtype=float)))]


def group_of(atoms, key: str = "config_type") -> Optional[str]:
    """The group of a structure: its ``info[key]`` as a string, or ``None``."""
    value = atoms.info.get(key)
    return None if value is None else str(value)


def _concat(parts: List[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


class Errors:
    """Predictions next to reference labels (eV, eV/Å), with each structure's group.

    :meth:`add` one structure at a time; :meth:`metrics` gives the numbers (the layout of
    ``e3pot predict --metrics-json``), :meth:`table` and :meth:`group_table` the printed tables.
    """

    def __init__(self, group_by: str = "config_type"):
        self.group_by = group_by
        self.e_pred, self.e_ref, self.n_atoms, self.e_type = [], [], [], []
        self.f_pred, self.f_ref, self.f_type = [], [], []
        self.counts: collections.Counter = collections.Counter()  # structures with a label, per group
        self.typed = False  # some structure had a group
        self.left_out = 0  # structures with non-finite reference labels
        self.first_left_out: Optional[str] = None  # "file, frame k (energy)" of the first of them

    def add(self, pred: dict, energy: Optional[float], forces: Optional[np.ndarray], n_atoms: int,
            group: Optional[str] = None, name: str = "?") -> None:
        """One structure: its prediction (``energy``, ``forces``), reference ``energy`` (eV) and
        ``forces`` (eV/Å) or ``None`` where it has none, its size and group; ``name`` is quoted if
        it is left out."""
        self.typed |= group is not None
        group = NO_GROUP if group is None else group
        bad = nonfinite_labels(energy, forces)
        if bad:
            self.left_out += 1
            if self.first_left_out is None:
                self.first_left_out = f"{name} ({' and '.join(bad)})"
            return
        if energy is not None:
            self.e_pred.append(float(pred["energy"]))
            self.e_ref.append(float(energy))
            self.n_atoms.append(n_atoms)
            self.e_type.append(group)
        if forces is not None:
            self.f_pred.append(np.asarray(pred["forces"], dtype=float).reshape(-1))
            self.f_ref.append(np.asarray(forces, dtype=float).reshape(-1))
            self.f_type.append(np.full(len(self.f_ref[-1]), group, dtype=object))
        if energy is not None or forces is not None:
            self.counts[group] += 1

    @property
    def n_structures(self) -> int:
        """Structures with a finite reference energy or forces."""
        return sum(self.counts.values())

    def arrays(self) -> Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(predicted, reference, group) per quantity: energy (eV), energy_per_atom (eV/atom)
        and force components (eV/Å)."""
        e_pred, e_ref, n = np.array(self.e_pred, float), np.array(self.e_ref, float), np.array(self.n_atoms)
        e_type = np.array(self.e_type, dtype=object)
        return {"energy": (e_pred, e_ref, e_type), "energy_per_atom": (e_pred / n, e_ref / n, e_type),
                "forces": (_concat(self.f_pred, float), _concat(self.f_ref, float), _concat(self.f_type, object))}

    def metrics(self) -> dict:
        """MAE, RMSE, mean signed error and count of :meth:`arrays`, overall and per group (under
        ``by_config_type``, whatever ``group_by`` is), in meV, meV/atom and meV/Å; ``None`` where
        there is no reference; the structures left out for non-finite labels."""
        data = self.arrays()
        overall = {q: error_stats(pred, ref, 1000.0) for q, (pred, ref, _) in data.items()}
        by_type = {name: {"n_structures": n, **dict.fromkeys(QUANTITIES)} for name, n in self.counts.items()}
        for q, (pred, ref, types) in data.items():
            for name, stats in stats_by_type(pred, ref, types, 1000.0).items():
                by_type[name][q] = stats
        return {"units": dict(QUANTITIES), "n_structures": self.n_structures, "overall": overall,
                "group_by": self.group_by, "by_config_type": by_type if self.typed else {},
                "n_left_out_nonfinite": self.left_out, "first_left_out_nonfinite": self.first_left_out}

    def summary(self) -> Dict[str, float]:
        """The overall metrics as one flat dict: ``n_structures``, ``n_left_out_nonfinite`` and
        ``<quantity>_<mae|rmse|mean|std>_<unit>`` (``energy_mae_meV``, ``energy_per_atom_mae_meV``,
        ``forces_mae_meV_A``, ...; the standard deviation of the errors is sqrt(rmse² − mean²));
        NaN for a quantity without references."""
        out = {"n_structures": self.n_structures, "n_left_out_nonfinite": self.left_out}
        suffix = {"energy": "meV", "energy_per_atom": "meV", "forces": "meV_A"}
        for q, stats in self.metrics()["overall"].items():
            stats = stats or dict.fromkeys(("mae", "rmse", "mean"), float("nan"))
            std = float(np.sqrt(max(stats["rmse"] ** 2 - stats["mean"] ** 2, 0.0)))
            for key, value in (*((k, stats[k]) for k in ("mae", "rmse", "mean")), ("std", std)):
                out[f"{q}_{key}_{suffix[q]}"] = value
        return out

    def left_out_line(self) -> str:
        """A line on the structures left out for non-finite labels ("" when there are none)."""
        if not self.left_out:
            return ""
        what = "structure" if self.left_out == 1 else "structures"
        return (f"left out of the error metrics: {self.left_out} {what} with a NaN or infinite reference energy or "
                f"forces (the first: {self.first_left_out})")

    def report(self, metrics: Optional[dict] = None) -> str:
        """The printed report: the overall table, the table per group (when the structures have
        groups) and the line on structures left out; "" when there is nothing to say."""
        metrics = metrics or self.metrics()
        table, lines = self.table(metrics), []
        if table:
            lines.append("\nErrors against the reference labels in the inputs:\n" + table)
        if table and self.typed:
            lines.append(f"\nBy {self.group_by} (energy per atom in meV/atom, forces in meV/Å):\n"
                         + self.group_table(metrics))
        if self.left_out:
            lines.append(("\n" if table else "") + self.left_out_line())
        return "\n".join(lines)

    @staticmethod
    def table(metrics: dict) -> str:
        """The overall MAE, RMSE and mean signed error of :meth:`metrics` as a markdown table ("" when
        there are no references)."""
        rows = []
        for key, name in (("energy", "energy"), ("energy_per_atom", "energy / atom"), ("forces", "forces")):
            s = metrics["overall"][key]
            if s:
                mean = "" if key == "forces" else f"{s['mean']:+10.3f}"
                rows.append(f"| {name:<13} | {s['mae']:10.3f} | {s['rmse']:10.3f} | {mean:>10} | "
                            f"{QUANTITIES[key]:<8} |")
        if not rows:
            return ""
        head = ("| quantity      |        MAE |       RMSE | mean error | unit     |\n"
                "|---|---:|---:|---:|---|")
        return head + "\n" + "\n".join(rows)

    @staticmethod
    def group_table(metrics: dict) -> str:
        """Energy per atom (meV/atom) and force (meV/Å) MAE and RMSE per group and for all, aligned."""
        head = [metrics["group_by"], "structures", "E/atom MAE", "E/atom RMSE", "forces MAE", "forces RMSE"]
        overall = {**metrics["overall"], "n_structures": metrics["n_structures"]}
        rows = [head]
        for name, m in [*metrics["by_config_type"].items(), ("(all)", overall)]:
            cells = ("-" if s is None else f"{s[key]:.3f}"
                     for s in (m["energy_per_atom"], m["forces"]) for key in ("mae", "rmse"))
            rows.append([name, str(m["n_structures"]), *cells])
        widths = [max(len(row[k]) for row in rows) for k in range(len(head))]
        lines = ["| " + " | ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])])
                 + " |" for row in rows]
        return "\n".join([lines[0], "|---|" + "---:|" * (len(head) - 1), *lines[1:]])


def _as_item(item) -> tuple:
    """``(name, atoms, frame)`` of a triple as :func:`e3pot.data.io.iter_labelled` yields, or of a Frame."""
    from e3pot.data.io import Frame, labelled_atoms

    return (item.source, labelled_atoms(item), item) if isinstance(item, Frame) else item


def iter_scored(model, items: Iterable, errors: Errors, batch_size: int = 32,
                memory_budget: Optional[float] = None, uncertainty=None) -> Iterator[Tuple[str, object, dict]]:
    """Predict every structure of ``items`` and add its errors to ``errors``; yield ``(name, atoms,
    prediction)`` in order, as each batch is done.

    ``items``: ``(name, atoms, frame)`` triples (:func:`e3pot.data.io.iter_labelled`; the labels are
    ``frame``'s) or :class:`~e3pot.data.io.Frame` objects, consumed lazily. ``model``, ``batch_size``
    and ``memory_budget`` are those of :func:`e3pot.predict.iter_predictions`. ``uncertainty``: an
    :class:`e3pot.calibration.UncertaintyErrors` that collects the predicted spreads against the errors (the
    model must then be a committee or a shallow ensemble).
    """
    from e3pot.predict import iter_predictions

    mine, theirs = itertools.tee(_as_item(item) for item in items)  # holds at most one batch
    named = ((name, atoms) for name, atoms, _ in theirs)
    for (name, atoms, frame), pred in zip(mine, iter_predictions(model, named, batch_size=batch_size, named=True,
                                                                  memory_budget=memory_budget,
                                                                  uncertainty=uncertainty is not None)):
        errors.add(pred, frame.energy, frame.forces, len(atoms), group_of(atoms, errors.group_by), name)
        if uncertainty is not None and not nonfinite_labels(frame.energy, frame.forces):
            has_e, has_f = frame.energy is not None, frame.forces is not None
            if has_e or has_f:
                uncertainty.add(pred["energy"] - frame.energy if has_e else None, pred["energy_std"] if has_e else None,
                                len(atoms), pred["forces"] - np.asarray(frame.forces) if has_f else None,
                                pred["forces_std"] if has_f else None)
        yield name, atoms, pred


def score(model, items: Iterable, batch_size: int = 32, group_by: str = "config_type",
          memory_budget: Optional[float] = None) -> Errors:
    """The :class:`Errors` of ``model`` on ``items`` (see :func:`iter_scored`)."""
    errors = Errors(group_by)
    for _ in iter_scored(model, items, errors, batch_size, memory_budget):
        pass
    return errors


def scan(items: Iterable, references: bool, group_by: Optional[str]) -> Tuple[bool, bool, List[str]]:
    """Read ``items`` (as :func:`iter_scored` takes them) until one with finite reference labels
    (when ``references``) and one with the info key ``group_by`` (when given) have been seen:
    labelled, keyed inputs cost one structure; only inputs that lack them are read through.

    Returns (has finite references, has the key, the info keys seen, in order of appearance).
    """
    has_refs, has_key, keys = not references, group_by is None, {}
    for _, atoms, frame in map(_as_item, items):
        if not has_refs:
            has_refs = ((frame.energy is not None or frame.forces is not None)
                        and not nonfinite_labels(frame.energy, frame.forces))
        if not has_key:
            has_key = group_by in atoms.info
            keys.update(dict.fromkeys(atoms.info))
        if has_refs and has_key:
            break
    return has_refs, has_key, list(keys)
