"""Write e3pot's rMD17 split (split_seed 0, 50 validation frames) and the test file as extxyz in eV."""
import sys

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from e3pot.data.io import LabelSpec, read_frames


def frames_to_atoms(frames):
    out = []
    for f in frames:
        a = Atoms(numbers=f.numbers, positions=f.positions)
        a.calc = SinglePointCalculator(a, energy=f.energy, forces=f.forces)
        out.append(a)
    return out


def main(train_npz, test_npz, work):
    spec = LabelSpec(energy_unit="kcal/mol")
    frames = read_frames(train_npz, spec)
    order = np.random.default_rng(0).permutation(len(frames))  # as E3PotDataModule(split_seed=0, n_val=50)
    write(f"{work}/val.extxyz", frames_to_atoms([frames[k] for k in order[:50]]))
    write(f"{work}/train.extxyz", frames_to_atoms([frames[k] for k in order[50:]]))
    write(f"{work}/test.extxyz", frames_to_atoms(read_frames(test_npz, spec)))


if __name__ == "__main__":
    main(*sys.argv[1:4])
