"""Reading, splitting and batching training data for Lightning."""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import List, Optional, Union

import numpy as np
import pytorch_lightning as pl
from ase.data import atomic_numbers as _symbol_to_z
from ase.data import chemical_symbols
import torch
from torch.utils.data import DataLoader, DistributedSampler

from e3pot.data.dataset import GraphDataset, StoreDataset, collate_batch, collate_batch_numpy
from e3pot.data.io import DataError, LabelSpec, read_frames
from e3pot.data.neighbors import SpeciesMap
from e3pot.data.store import FrameStore, frame_columns, is_store

VAL_FRACTION = 0.1  # the default share of the training file held out for validation


class E3PotDataModule(pl.LightningDataModule):
    """Structures from ASE-readable files or rMD17-style npz, turned into graphs once, or from a store
    made by ``e3pot preprocess``, read lazily (in the DataLoader's workers with ``num_workers``).

    Args:
        train_file: training structures (extxyz, xyz, traj, ASE db, npz, ...) or a store.
        val_file: separate validation structures (a file or a store); when absent, a random split of
            ``train_file``.
        val_fraction: fraction of ``train_file`` held out for validation (ignored with ``val_file``).
        n_val: number of frames held out instead of a fraction.
        n_train: use only the first N training frames after the split (learning curves).
        split_seed: seed of the random split.
        r_max: cutoff of the radius graph in Å (set from the model's ``r_max``).
        elements: chemical symbols the model covers; default: those in the data.
        energy_key, forces_key, stress_key: label names (None: the format's default).
        energy_unit: unit of energies in the file (eV, meV, kcal/mol, kJ/mol, Hartree, Ry).
        length_unit: unit of positions in the file (Å, Bohr, nm).
        stress_unit: unit of stresses (GPa, kbar, bar); None means energy_unit/length_unit^3.
        batch_size, val_batch_size: structures per batch (per process under DDP).
        num_workers: DataLoader worker processes.
        shuffle: shuffle the training frames every epoch.
        augment: rotate and reflect every training structure at random each time it is drawn
            (positions, forces, cell and stress; :mod:`e3pot.data.augment`), to teach the symmetry to a
            model that does not have it built in (``model.kind: cartesian``). Validation frames stay as
            they are.
        replay_file: frames of the starting model's own training data (fine-tuning, ``model.init_from``), a
            structure file (not a store): a share of every training batch is drawn from them, so that the model
            does not forget what it knew. They count with their forces only (the energies of another level of
            theory have another reference); a tenth of them (at most 100) is held out and reported as
            ``val_replay/*`` next to ``val/*``. Their labels are checked as the training labels are (a warning
            when they do not look like eV and Å).
        replay_fraction: the share of each training batch drawn from ``replay_file`` (default 0.25).
        replay_energy_unit, replay_length_unit, replay_forces_key: how to read ``replay_file`` (default: eV, Å,
            the format's forces key). They are not taken from ``energy_unit``, ``length_unit`` and ``forces_key``:
            the replayed frames come from another run, often in other units than the new data, so where those
            are set to other than the defaults, the replay file's own must be given too.
        bootstrap: train on a bootstrap draw of the training frames (as many frames as there are, drawn with
            replacement, after the split and ``n_train``): members of a committee trained on different draws
            differ more, as their data differ. ``true`` seeds the draw with the run's seed (``seed_everything``),
            so that members with different seeds get different draws; an integer seeds it itself.
    """

    def __init__(self, train_file: str, val_file: Optional[str] = None, val_fraction: float = VAL_FRACTION,
                 n_val: Optional[int] = None, n_train: Optional[int] = None, split_seed: int = 0,
                 r_max: float = 5.0, elements: Optional[List[str]] = None,
                 energy_key: Optional[str] = None, forces_key: Optional[str] = None,
                 stress_key: Optional[str] = None, energy_unit: str = "eV", length_unit: str = "Å",
                 stress_unit: Optional[str] = None, batch_size: int = 8, val_batch_size: Optional[int] = None,
                 num_workers: int = 0, shuffle: bool = True, augment: bool = False,
                 bootstrap: Union[bool, int] = False, replay_file: Optional[str] = None,
                 replay_fraction: Optional[float] = None, replay_energy_unit: Optional[str] = None,
                 replay_length_unit: Optional[str] = None, replay_forces_key: Optional[str] = None):
        super().__init__()
        self.save_hyperparameters()  # stored in checkpoints, so that a resumed run can be compared
        if val_file is None and n_val is None and not 0.0 < val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        # options of the split that another one overrides: refused rather than ignored (val_fraction only when
        # it is not its default, which configs write out)
        if val_file is not None and n_val is not None:
            raise ValueError(f"data.n_val {n_val} has no effect with data.val_file (the validation frames are that "
                             "file's); leave one of them out (data.n_val null)")
        if val_fraction != VAL_FRACTION and (val_file is not None or n_val is not None):
            other = "data.val_file" if val_file is not None else f"data.n_val {n_val}"
            raise ValueError(f"data.val_fraction {val_fraction} has no effect with {other}; leave one of them out")
        for name, value, low in (("batch_size", batch_size, 1), ("val_batch_size", val_batch_size, 1),
                                 ("n_train", n_train, 1), ("n_val", n_val, 1), ("num_workers", num_workers, 0),
                                 ("split_seed", split_seed, 0)):
            if value is not None and value < low:
                raise ValueError(f"data.{name} must be at least {low}, got {value}")
        if not r_max > 0:
            raise ValueError(f"the cutoff r_max must be positive, got {r_max} Å")
        self.train_file, self.val_file = train_file, val_file
        self.val_fraction, self.n_val, self.n_train, self.split_seed = val_fraction, n_val, n_train, split_seed
        self.r_max = r_max
        self.elements = elements
        self.labels = LabelSpec(energy_key, forces_key, stress_key, energy_unit, length_unit, stress_unit)
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.augment = augment
        if not isinstance(bootstrap, bool) and (not isinstance(bootstrap, int) or bootstrap < 0):
            raise ValueError(f"data.bootstrap must be true, false or a seed (an integer >= 0), got {bootstrap!r}")
        self.bootstrap = bootstrap
        if bootstrap is True:  # the run's seed, set before the data module is made; recorded, so that --resume
            # with another seed (another draw) is refused
            self.hparams["bootstrap_seed"] = int(os.environ.get("PL_GLOBAL_SEED", "0"))
        replay_options = {"replay_fraction": replay_fraction, "replay_energy_unit": replay_energy_unit,
                          "replay_length_unit": replay_length_unit, "replay_forces_key": replay_forces_key}
        given = [f"data.{name}" for name, value in replay_options.items() if value is not None]
        if given and replay_file is None:
            raise ValueError(f"{', '.join(given)} need{'s' if len(given) == 1 else ''} data.replay_file "
                             "(the frames to replay)")
        if replay_file is not None:
            replay_fraction = 0.25 if replay_fraction is None else replay_fraction
            if not 0.0 < replay_fraction < 1.0:
                raise ValueError(f"data.replay_fraction must be in (0, 1), got {replay_fraction}")
            if round(batch_size * replay_fraction) < 1 or batch_size - round(batch_size * replay_fraction) < 1:
                raise ValueError(f"data.replay_fraction {replay_fraction} of data.batch_size {batch_size} leaves no "
                                 "room for new or for replayed frames; use a larger batch or another fraction")
        self.replay_file, self.replay_fraction = replay_file, replay_fraction
        self.replay_labels = self._replay_labels(replay_energy_unit, replay_length_unit, replay_forces_key) \
            if replay_file is not None else None
        self.replay_set = self.replay_val_set = None
        self.species_order: Optional[List[int]] = None  # a starting model's species (fine-tuning), set before setup
        self.train_set = None  # GraphDataset, or StoreDataset for a store made by `e3pot preprocess`
        self.val_set = None
        self.atomic_numbers: List[int] = []

    def _replay_labels(self, energy_unit: Optional[str], length_unit: Optional[str],
                       forces_key: Optional[str]) -> LabelSpec:
        """How ``replay_file`` is read: its own options, eV and Å by default. A label option of the training data
        set to other than its default, with no replay option for it, is refused: whether the replay file shares
        it cannot be told, and a wrong guess scales every replayed force without a sign."""
        from e3pot.data.units import energy_factor, length_factor

        own = {"energy_unit": energy_unit, "length_unit": length_unit, "forces_key": forces_key}
        differs = {"energy_unit": lambda v: energy_factor(v) != 1.0, "length_unit": lambda v: length_factor(v) != 1.0,
                   "forces_key": lambda v: v not in (None, "forces")}
        unsaid = [f"data.{name}={getattr(self.labels, name)!r}" for name in own
                  if own[name] is None and differs[name](getattr(self.labels, name))]
        if unsaid:
            names = [f"data.replay_{name}" for name in own if own[name] is None and
                     differs[name](getattr(self.labels, name))]
            raise ValueError(f"data.replay_file {self.replay_file}: the training data are read with "
                             f"{', '.join(unsaid)}, and the replayed frames, from another run, may not be: give "
                             f"{' and '.join(names)} for the replay file too (the same value if it is)")
        return LabelSpec(forces_key=forces_key, energy_unit=energy_unit or "eV", length_unit=length_unit or "Å")

    def _read(self, path: str):
        """A side of the data: ("store", store, frame indices) or ("frames", list of frames)."""
        if is_store(path):
            store = FrameStore(path)
            self._check_store_labels(store)
            return ("store", store, np.arange(len(store)))
        return ("frames", read_frames(path, self.labels))

    def _check_store_labels(self, store: FrameStore) -> None:
        """A store holds labels already read and converted to eV and Å by ``e3pot preprocess``: a label
        option set here that differs from the one the store was made with would be silently ignored."""
        from e3pot.data.units import energy_factor, length_factor

        saved = store.meta.get("labels", {})
        same_unit = {"energy_unit": energy_factor, "length_unit": length_factor}  # spellings of one unit agree
        conflicts = []
        for field in dataclasses.fields(LabelSpec):
            given = getattr(self.labels, field.name)
            made = saved.get(field.name, field.default)
            if field.name in same_unit and made is not None and given is not None:
                differs = same_unit[field.name](given) != same_unit[field.name](made)
            else:
                differs = made != given
            if given != field.default and differs:
                made = saved.get(field.name, field.default) if field.name in saved else "(not recorded)"
                conflicts.append(f"data.{field.name} is {given!r} here, but the store was made with {made!r}")
        if conflicts:
            raise DataError(f"{store.path}: " + "; ".join(conflicts) + ". A store's labels were converted once, "
                            "when it was made (to eV, Å, eV/Å); leave these options out or set them as the store "
                            "was made, or make the store again with e3pot preprocess and the units of the source")

    @staticmethod
    def _size(side) -> int:
        return len(side[2]) if side[0] == "store" else len(side[1])

    @staticmethod
    def _take(side, order):
        return ("store", side[1], side[2][order]) if side[0] == "store" else ("frames", [side[1][k] for k in order])

    def _split(self):
        train = self._read(self.train_file)
        if self.val_file is not None:
            return train, self._read(self.val_file)
        n = self._size(train)
        n_val = self.n_val if self.n_val is not None else int(round(self.val_fraction * n))
        if n_val < 1 or n_val >= n:
            raise DataError(f"{self.train_file}: {n} frames cannot be split into training and "
                            f"{n_val} validation frames (val_fraction={self.val_fraction}, n_val={self.n_val}); "
                            f"add frames or give val_file")
        order = np.random.default_rng(self.split_seed).permutation(n)
        return self._take(train, order[n_val:]), self._take(train, order[:n_val])

    def bootstrap_draw(self, n: int) -> np.ndarray:
        """The frames (indices into the ``n`` training frames) of the bootstrap draw, sorted."""
        if self.bootstrap is True:
            seed = self.hparams["bootstrap_seed"]  # set by seed_everything
        else:
            seed = int(self.bootstrap)
        return np.sort(np.random.default_rng([seed, 2]).integers(0, n, n))

    @staticmethod
    def _elements(side) -> set:
        if side[0] == "frames":
            return {int(z) for f in side[1] for z in f.numbers}
        store, indices = side[1], side[2]
        counts = frame_columns(store, indices, store.elements)["counts"]
        return {z for z, c in zip(store.elements, counts.sum(axis=0)) if c > 0}

    def _dataset(self, side, species: SpeciesMap, desc: str):
        if side[0] == "store":
            unknown = sorted(set(side[1].elements) - set(species.atomic_numbers))
            used = self._elements(side)
            if set(unknown) & used:
                raise DataError(f"{side[1].path}: element(s) {', '.join(chemical_symbols[z] for z in unknown)} "
                                "not known to the model")
            return StoreDataset(side[1], side[2], species, self.r_max)
        return GraphDataset(side[1], species, self.r_max, desc=desc)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        train, val = self._split()
        if self.n_train is not None:
            if self.n_train > self._size(train):
                raise DataError(f"{self.train_file}: n_train={self.n_train} but only {self._size(train)} training "
                                f"frames remain after the split")
            train = self._take(train, np.arange(self.n_train))
        if self.bootstrap is not False:
            train = self._take(train, self.bootstrap_draw(self._size(train)))
        replay = self._read_replay() if self.replay_file is not None else None
        in_train, in_val = self._elements(train), self._elements(val)
        if self.elements:
            unknown = [s for s in self.elements if s not in _symbol_to_z]
            if unknown:
                raise ValueError(f"unknown element symbol(s) in data.elements: {', '.join(unknown)}")
            self.atomic_numbers = sorted(_symbol_to_z[s] for s in self.elements)
        else:
            self.atomic_numbers = sorted(in_train)
        inherited = set()
        module = getattr(getattr(self, "trainer", None), "lightning_module", None)
        if self.species_order is None and getattr(module, "start_species", None):
            self.species_order = list(module.start_species)  # Lightning sets the data up before the model
        if self.species_order:  # fine-tuning: the starting model's species first, in its order
            from e3pot.train.finetune import species_order

            inherited = set(self.species_order)
            self.atomic_numbers = species_order(self.species_order, self.atomic_numbers)
        self._check_elements(in_train | inherited, in_val)
        species = SpeciesMap(self.atomic_numbers)
        self.train_set = self._dataset(train, species, "training graphs")
        self.val_set = self._dataset(val, species, "validation graphs")
        if replay is not None:
            unknown = sorted({int(z) for f in replay for z in f.numbers} - set(self.atomic_numbers))
            if unknown:
                from ase.data import chemical_symbols

                raise DataError(f"{self.replay_file}: element(s) {', '.join(chemical_symbols[z] for z in unknown)} are "
                                "neither in the training frames nor known to the starting model")
            n_val = min(100, max(1, len(replay) // 10))
            order = np.random.default_rng([self.split_seed, 1]).permutation(len(replay))
            self.replay_val_set = GraphDataset([replay[k] for k in order[:n_val]], species, self.r_max,
                                               desc="replay validation graphs")
            self.replay_set = GraphDataset([replay[k] for k in order[n_val:]], species, self.r_max,
                                           desc="replay graphs")

    def validation_set(self, atomic_numbers: List[int]):
        """The validation frames alone, as graphs for the species ``atomic_numbers`` (a trained model's): the
        ``val_set`` of :meth:`setup`, without building the training graphs (``val_file``, or the same split of
        ``train_file``)."""
        val = self._read(self.val_file) if self.val_file is not None else self._split()[1]
        unknown = sorted(self._elements(val) - set(atomic_numbers))
        if unknown:
            where = self.val_file if self.val_file is not None else f"the validation split of {self.train_file}"
            raise DataError(f"{where}: element(s) {', '.join(chemical_symbols[z] for z in unknown)} not known to the "
                            "model")
        return self._dataset(val, SpeciesMap(list(atomic_numbers)), "validation graphs")

    def _check_elements(self, in_train: set, val_elements: set) -> None:
        """Every element must occur in the training frames: one seen only in validation would get an
        untrained embedding and a zero energy shift, and the model would then accept it silently."""
        listed = set(self.atomic_numbers) - in_train  # data.elements names an element the data lacks
        in_val = val_elements - in_train - listed
        if listed or in_val:
            where = self.val_file if self.val_file is not None else f"the validation split of {self.train_file}"
            parts = [f"{chemical_symbols[z]} (listed in data.elements)" for z in sorted(listed)]
            parts += [f"{chemical_symbols[z]} (in {where})" for z in sorted(in_val)]
            raise DataError(f"element(s) {', '.join(parts)} do not occur in the training frames of "
                            f"{self.train_file}; a model cannot learn an element it is not trained on. Add frames "
                            "with it to the training data, or remove it")

    def _read_replay(self) -> list:
        """The replay frames, without their energies and stresses (forces only; see ``replay_file``)."""
        if is_store(self.replay_file):
            raise DataError(f"{self.replay_file}: data.replay_file takes a structure file (extxyz, traj, db, npz), "
                            "not a store")
        frames = read_frames(self.replay_file, self.replay_labels)
        missing = [f.source for f in frames if f.forces is None]
        if missing:
            raise DataError(f"{missing[0]}: a replay frame needs forces (replayed frames count with their forces only)")
        if len(frames) < 2:
            raise DataError(f"{self.replay_file}: {len(frames)} frame(s); replay needs at least 2 (one is held out)")
        warning = implausible_frames(frames)  # the energies too, before they are set aside
        if warning:
            from pytorch_lightning.utilities import rank_zero_warn

            rank_zero_warn(f"{self.replay_file}: {warning}")
        return [dataclasses.replace(f, energy=None, stress=None) for f in frames]

    def source_of(self, k: int) -> str:
        """The source of training item ``k`` (replayed frames follow the training frames)."""
        n = len(self.train_set)
        return self.train_set.sources[k] if k < n else self.replay_set.sources[k - n]

    def _loader(self, dataset, batch_size: int, shuffle: bool, augment: bool = False) -> DataLoader:
        """Under DDP each process takes its share of every epoch: rank r of n takes every n-th frame of the
        epoch's order (a permutation seeded by split_seed and the epoch; without shuffling, the frames in
        order), so n processes at batch b see together what one process sees at batch n*b."""
        trainer = getattr(self, "trainer", None)
        world = trainer.world_size if trainer is not None else 1
        sampler = None
        if world > 1:
            sampler = DistributedSampler(dataset, num_replicas=world, rank=trainer.global_rank, shuffle=shuffle,
                                         seed=self.split_seed)
        collate = collate_batch_numpy if self.num_workers else collate_batch
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False,
                          sampler=sampler, collate_fn=functools.partial(collate, augment=augment),
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        if self.replay_set is None:
            return self._loader(self.train_set, self.batch_size, self.shuffle, self.augment)
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.world_size > 1:
            raise ValueError("data.replay_file does not run under DDP yet; train on one process")
        n_new, n_replay = len(self.train_set), len(self.replay_set)
        sampler = ReplayBatchSampler(n_new, n_replay, self.batch_size, self.replay_fraction, self.shuffle,
                                     self.split_seed)
        collate = collate_batch_numpy if self.num_workers else collate_batch
        return DataLoader(_Offset([self.train_set, self.replay_set]), batch_sampler=sampler,
                          collate_fn=functools.partial(collate, augment=self.augment), num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self):
        loader = self._loader(self.val_set, self.val_batch_size, False)
        if self.replay_val_set is None:
            return loader
        return [loader, self._loader(self.replay_val_set, self.val_batch_size, False)]


def implausible_frames(frames) -> Optional[str]:
    """:func:`e3pot.train.stats.implausible_units` for replayed frames (read, not made into graphs), naming the
    replay options."""
    from e3pot.train import stats

    columns = stats.FrameColumns(frames)
    return stats.implausible_units(columns, stats.fit_energy_shift(columns.with_energy(), columns.n_species),
                                   stats.force_rms(columns), what="replay labels",
                                   options=("data.replay_energy_unit", "data.replay_length_unit"))


class _Offset(torch.utils.data.Dataset):
    """Datasets one after the other; an item's index is its position in the whole (errors can name it)."""

    def __init__(self, datasets):
        self.datasets = datasets
        self.starts = np.cumsum([0] + [len(d) for d in datasets])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, k: int):
        part = int(np.searchsorted(self.starts, k, side="right") - 1)
        graph, labels, _ = self.datasets[part][k - int(self.starts[part])]
        return graph, labels, k


class ReplayBatchSampler(torch.utils.data.Sampler):
    """Batches of ``batch_size``: ``round(batch_size * fraction)`` replayed frames (indices ``n_new`` and up, drawn
    with replacement) and the rest new frames, every new frame once per epoch (the last batch may be smaller)."""

    def __init__(self, n_new: int, n_replay: int, batch_size: int, fraction: float, shuffle: bool, seed: int):
        self.n_new, self.n_replay, self.shuffle, self.seed = n_new, n_replay, shuffle, seed
        self.n_replay_batch = max(1, round(batch_size * fraction))
        self.n_new_batch = max(1, batch_size - self.n_replay_batch)
        self.epoch = 0

    def __len__(self) -> int:
        return -(-self.n_new // self.n_new_batch)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        order = rng.permutation(self.n_new) if self.shuffle else np.arange(self.n_new)
        for start in range(0, self.n_new, self.n_new_batch):
            new = order[start:start + self.n_new_batch]
            replay = self.n_new + rng.integers(0, self.n_replay, self.n_replay_batch)
            yield [int(k) for k in new] + [int(k) for k in replay]
