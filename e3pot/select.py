"""Which structures to label next: the most uncertain of a pool, kept apart from each other.

The pool (an MD trajectory, a file of candidates) is scored by a committee or a shallow ensemble
(:mod:`e3pot.model.ensemble`). The score of a structure is the largest force uncertainty of its atoms
(``forces_std``, eV/Å; ``score="energy"``: the energy uncertainty per atom, eV/atom).

Trust window: with ``max_score``, structures more uncertain than that are left out, as likely unphysical
(where a poor model's MD has wandered: too far from anything labelled to be worth a label yet; the upper
trust level of DP-GEN's scheme).

Diversity: the ``candidates`` most uncertain structures (default ``4 n``, at most half of the eligible ones
but at least ``n``) form the shortlist, with structures whose features equal those of a more uncertain one
(exact copies) left out. From it the picks are
made by farthest-point sampling in the model's invariant per-structure features (the mean over atoms of the
features its read-out sees), starting from the most uncertain structure: each next pick is the shortlisted
structure farthest from every earlier pick, so that near-copies (consecutive MD frames) are not picked twice
while a distinct, less uncertain structure is left. Each pick gets the reason in ``info``.

A pool whose scores are all exactly 0 is refused: the members (or heads) give identical predictions (the same
model file twice, members trained with the same seed and data), and the ranking would mean nothing.
"""
from __future__ import annotations

import warnings
from typing import Iterable, List, NamedTuple, Optional, Sequence

import numpy as np
import torch

from e3pot.data.graph import collate
from e3pot.data.neighbors import SpeciesMap, atoms_to_graph
from e3pot.model.ensemble import (Committee, IdenticalMembersWarning, describe, duplicate_members, has_uncertainty,
                                  identical_predictions_message, stored_heads)
from e3pot.model.runtime import load_any, run_spread

SCORES = {"forces": ("largest force uncertainty", "eV/Å"), "energy": ("energy uncertainty per atom", "eV/atom")}


class Scored(NamedTuple):
    score: np.ndarray  # (n_pool,) the uncertainty that ranks the structures
    features: np.ndarray  # (n_pool, n_features) invariant per-structure features
    largest_spread: float = float("nan")  # the largest energy_std or forces_std of the pool (0: members agree)


def feature_model(model):
    """The eager model whose read-out features describe a structure: the model, or a committee's first eager
    member; ValueError when there is none (exports only)."""
    return _feature_member(model)[0]


def _feature_member(model):
    """:func:`feature_model` and its index among a committee's members (0 for one model)."""
    from e3pot.model.base import EnergyModel

    members = model.members if isinstance(model, Committee) else [model]
    for k, member in enumerate(members):
        if isinstance(member, EnergyModel) and hasattr(member, "readout"):
            return member, k
    raise ValueError("select needs the features of a model file: give at least one model file (model.pt), not only "
                     "exported models")


def structure_features(model, graph) -> torch.Tensor:
    """The mean over each structure's atoms of the features its read-out sees (n_graphs, n_features)."""
    seen: List[torch.Tensor] = []
    hook = model.readout.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(graph)
    finally:
        hook.remove()
    h = seen[-1].double()
    n_graphs = graph.cell.shape[0]
    sums = torch.zeros((n_graphs, h.shape[1]), dtype=h.dtype, device=h.device).index_add(0, graph.batch, h)
    counts = torch.bincount(graph.batch, minlength=n_graphs).clamp(min=1).to(h.dtype)
    return sums / counts[:, None]


def score_pool(model, pool: Sequence, score: str = "forces", batch_size: int = 16,
               memory_budget: Optional[float] = None, progress: bool = False) -> Scored:
    """The uncertainty (``score``: see :data:`SCORES`) and the features of every structure of ``pool``."""
    from tqdm.auto import tqdm

    species = SpeciesMap(model.atomic_numbers)
    features_of, k_features = _feature_member(model)
    device = next(features_of.parameters()).device
    scores, feats = [], []
    largest = 0.0
    with tqdm(total=len(pool), unit="structure", desc="scoring", disable=not progress) as bar:
        for start in range(0, len(pool), batch_size):
            part = pool[start:start + batch_size]
            graph = collate([atoms_to_graph(a, species, model.r_max, source=f"structure {start + k}")
                             for k, a in enumerate(part)]).to(device=device)
            s = run_spread(model, graph, compute_stress=False, memory_budget=memory_budget)
            if score == "forces":
                per = torch.zeros(len(part), dtype=torch.float64).scatter_reduce(
                    0, graph.batch.cpu(), s.forces_std.double().cpu(), "amax", include_self=False)
            else:
                n_atoms = torch.bincount(graph.batch, minlength=len(part)).double().cpu()
                per = s.energy_std.double().cpu() / n_atoms
            scores.append(per.numpy())
            for std in (s.energy_std, s.forces_std):  # NaN counts as a spread: it is no agreement
                largest = max(largest, float(torch.nan_to_num(std.abs(), nan=float("inf")).max()))
            # the feature member reads the graph in its own order of the elements
            own = model.member_graph(k_features, graph) if isinstance(model, Committee) else graph
            feats.append(structure_features(features_of, own.to(dtype=features_of.dtype)).cpu().numpy())
            bar.update(len(part))
    return Scored(np.concatenate(scores), np.concatenate(feats), largest)


class Pick(NamedTuple):
    index: int  # in the pool
    rank: int  # 1 = the most uncertain of the pool
    distance: float  # feature distance to the nearest earlier pick (inf for the first)


def farthest_point_picks(score: np.ndarray, features: np.ndarray, n: int, candidates: Optional[int] = None,
                         max_score: Optional[float] = None) -> List[Pick]:
    """``n`` structures: the shortlist of the ``candidates`` (default: see the module's notes) most uncertain with a
    score of at most ``max_score``, exact feature copies of a more uncertain one left out, then farthest-point
    sampling from the most uncertain (see the module's notes). ValueError when the pool has fewer than ``n``
    distinct eligible structures."""
    n_pool = len(score)
    order = np.argsort(-score, kind="stable")
    rank = np.empty(n_pool, dtype=int)
    rank[order] = np.arange(1, n_pool + 1)
    scale = float(np.abs(features).max()) if features.size else 1.0
    distinct: List[int] = []
    too_uncertain = 0
    for i in order:  # most uncertain first; a copy of a structure already kept is left out
        if max_score is not None and score[i] > max_score:
            too_uncertain += 1
        elif not _has_copy(features, distinct, i, scale):
            distinct.append(int(i))
    if len(distinct) < n:
        beyond = f", {too_uncertain} above the trust level {max_score:g}" if too_uncertain else ""
        raise ValueError(f"asked for {n} structures, but the pool has {len(distinct)} distinct eligible ones "
                         f"({n_pool} in all{beyond}, the others copies); ask for at most {len(distinct)}")
    size = max(n, min(4 * n, len(distinct) // 2)) if candidates is None else max(n, candidates)
    short = np.array(distinct[:size])
    feats = features[short]
    picked = [0]
    nearest = np.linalg.norm(feats - feats[0], axis=1)
    picks = [Pick(int(short[0]), int(rank[short[0]]), float("inf"))]
    while len(picks) < n:
        k = int(np.argmax(nearest))
        picks.append(Pick(int(short[k]), int(rank[short[k]]), float(nearest[k])))
        picked.append(k)
        nearest = np.minimum(nearest, np.linalg.norm(feats - feats[k], axis=1))
    return picks


def _has_copy(features: np.ndarray, kept: List[int], i: int, scale: float) -> bool:
    if not kept:
        return False
    d = np.linalg.norm(features[kept] - features[i], axis=1)
    return bool((d <= 1e-9 * max(scale, 1e-300)).any())


def select_frames(models, pool: Iterable, n: int, candidates: Optional[int] = None, score: str = "forces",
                  batch_size: int = 16, device: str = "cpu", memory_budget: Optional[float] = None,
                  progress: bool = False, max_score: Optional[float] = None) -> List:
    """Pick ``n`` structures of ``pool`` (``ase.Atoms``) to label next, as the module's notes describe.

    ``models``: a committee (a list of model files, exports or modules; at least one a model file) or a shallow
    ensemble (one model trained with ``model.heads > 1``). Returns copies of the picked structures, in the order
    picked (the first is the most uncertain), without their calculators, with in ``info``:
    ``e3pot_select_reason`` (text), ``e3pot_select_score`` (the uncertainty), ``e3pot_select_rank`` (1: most
    uncertain of the pool), ``e3pot_select_pool_index`` and ``e3pot_select_distance`` (feature distance to the
    nearest earlier pick). ``max_score``: the upper trust level (same unit as the score); more uncertain structures
    are not picked. ValueError when ``n`` is not between 1 and the number of distinct eligible structures, and when
    the score is exactly 0 for every structure (members, or heads, that give identical predictions: nothing ranks
    the structures); :class:`~e3pot.model.ensemble.IdenticalMembersWarning` for a committee member given twice.
    """
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; use one of {', '.join(SCORES)}")
    pool = list(pool)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"the number of structures to pick must be a positive integer, got {n!r}")
    if n > len(pool):
        raise ValueError(f"asked for {n} structures, but the pool holds only {len(pool)}; ask for at most {len(pool)}")
    if candidates is not None and candidates < n:
        raise ValueError(f"candidates ({candidates}) must be at least the number of picks ({n})")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if max_score is not None and not max_score > 0:
        raise ValueError(f"max_score (the upper trust level) must be positive, got {max_score}")
    model = load_any(list(models) if isinstance(models, (list, tuple)) else models, device=device)
    if not has_uncertainty(model):
        what = describe(model)
        if stored_heads(model) > 1:
            raise ValueError(f"selection needs an uncertainty, but the model is {what}")
        raise ValueError(f"selection needs an uncertainty, but {what} has none: give several model files "
                         "(a committee) or a model trained with model.heads > 1 (a shallow ensemble)")
    if isinstance(model, Committee):
        for text in duplicate_members(model):
            warnings.warn(f"{text}: a member given twice gives the same predictions and adds nothing to the spread "
                          "that ranks the structures", IdenticalMembersWarning, stacklevel=2)
    scored = score_pool(model, pool, score, batch_size, memory_budget, progress)
    if scored.largest_spread == 0:
        raise ValueError(f"{identical_predictions_message(model, 'every structure of the pool')}; there is nothing "
                         "to rank the structures by")
    if not scored.score.any():
        if score == "forces":
            raise ValueError("every structure of the pool has a force spread of exactly 0 (single atoms, or atoms "
                             "without neighbours within the cutoff), so the forces rank nothing; rank by the energy "
                             "spread (score='energy', --score energy)")
        raise ValueError("every structure of the pool has an energy spread of exactly 0, so the energies rank "
                         "nothing; rank by the force spread (score='forces', --score forces)")
    picks = farthest_point_picks(scored.score, scored.features, int(n), candidates, max_score)
    what, unit = SCORES[score]
    out = []
    for k, pick in enumerate(picks, start=1):
        atoms = pool[pick.index].copy()
        atoms.calc = None
        value = float(scored.score[pick.index])
        spacing = "the first pick" if k == 1 else f"feature distance {pick.distance:.3g} to the nearest earlier pick"
        atoms.info.update(
            e3pot_select_reason=f"pick {k} of {n}: {what} {value:.4g} {unit}, rank {pick.rank} of {len(pool)} in the "
                                f"pool; {spacing}",
            e3pot_select_score=value, e3pot_select_rank=pick.rank, e3pot_select_pool_index=pick.index,
            e3pot_select_distance=pick.distance if np.isfinite(pick.distance) else -1.0)
        out.append(atoms)
    return out
