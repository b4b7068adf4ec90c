"""Write e3pot's 3BPA split (train_300K.xyz, split_seed 0, 50 validation frames) and the
train_mixedT.xyz frames as the test file, as extxyz in eV, for NequIP."""
import sys

import numpy as np
from rmd17_to_extxyz import frames_to_atoms

from ase.io import write
from e3pot.data.io import read_frames


def main(train_xyz, test_xyz, work):
    frames = read_frames(train_xyz)
    order = np.random.default_rng(0).permutation(len(frames))  # as E3PotDataModule(split_seed=0, n_val=50)
    write(f"{work}/val.extxyz", frames_to_atoms([frames[k] for k in order[:50]]))
    write(f"{work}/train.extxyz", frames_to_atoms([frames[k] for k in order[50:]]))
    write(f"{work}/test.extxyz", frames_to_atoms(read_frames(test_xyz)))


if __name__ == "__main__":
    main(*sys.argv[1:4])
