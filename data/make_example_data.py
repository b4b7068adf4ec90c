"""Generate a small example training set by GFN2-xTB molecular dynamics.

Two small non-periodic molecules are simulated with Langevin dynamics using
the GFN2-xTB tight-binding method (tblite):

* ethanol      (``ase.build.molecule('CH3CH2OH')``, 9 atoms)
* acetaldehyde (``ase.build.molecule('CH3CHO')``, 7 atoms)

For each molecule, initial velocities are drawn from a Maxwell-Boltzmann
distribution at the target temperature (seeded), the trajectory is
equilibrated, and then a frame is recorded every ``--stride`` steps.  Each
frame stores the xTB energy (eV) and forces (eV/Angstrom) via a
SinglePointCalculator, plus ``atoms.info['molecule']``, and is written as
extended XYZ, so ``ase.io.read(path, ':')`` returns atoms whose
``get_potential_energy()`` and ``get_forces()`` work.

The shipped ``data/example.extxyz`` was produced with:

    OMP_NUM_THREADS=1 python data/make_example_data.py

i.e. the defaults: 250 frames per molecule (500 total), seed 0, 500 K,
stride 10, 0.5 fs timestep, 200 equilibration steps.  Single-threaded xTB
makes the output byte-for-byte reproducible; with more threads the energies
differ only at the ~1e-12 eV level.
"""
import argparse
import os
import time

import numpy as np
from ase import units
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation
from tblite.ase import TBLite

try:  # ASE >= 3.29 name of MaxwellBoltzmannDistribution
    from ase.md.velocitydistribution import thermalize_momenta as MaxwellBoltzmannDistribution
except ImportError:
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

MOLECULES = [("ethanol", "CH3CH2OH"), ("acetaldehyde", "CH3CHO")]
TIMESTEP_FS = 0.5
FRICTION = 0.01 / units.fs
EQUILIBRATION_STEPS = 200


def run_molecule(name, formula, n_frames, stride, temperature, seed):
    atoms = molecule(formula)
    atoms.pbc = False
    atoms.cell = None
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    dyn = Langevin(atoms, timestep=TIMESTEP_FS * units.fs, temperature_K=temperature,
                   friction=FRICTION, fixcm=False, rng=rng)
    dyn.run(EQUILIBRATION_STEPS)
    frames = []
    for i in range(n_frames):
        dyn.run(stride)
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces())
        frame.info["molecule"] = name
        frames.append(frame)
        if (i + 1) % 50 == 0:
            print(f"  {name}: {i + 1}/{n_frames} frames, "
                  f"T = {atoms.get_temperature():.0f} K", flush=True)
    return frames


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(here, "example.extxyz"))
    p.add_argument("--frames-per-molecule", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=500.0, help="K")
    p.add_argument("--stride", type=int, default=10, help="MD steps between frames")
    args = p.parse_args()

    t0 = time.time()
    all_frames = []
    for k, (name, formula) in enumerate(MOLECULES):
        print(f"{name} ({formula}): MD at {args.temperature:.0f} K", flush=True)
        all_frames += run_molecule(name, formula, args.frames_per_molecule, args.stride,
                                   args.temperature, args.seed + k)
    write(args.out, all_frames, format="extxyz")

    print(f"\nwrote {len(all_frames)} frames to {args.out} "
          f"({os.path.getsize(args.out) / 1024:.0f} KiB) in {time.time() - t0:.0f} s")
    forces_all = []
    for name, _ in MOLECULES:
        sel = [a for a in all_frames if a.info["molecule"] == name]
        e = np.array([a.get_potential_energy() for a in sel])
        f = np.concatenate([a.get_forces().ravel() for a in sel])
        forces_all.append(f)
        print(f"  {name}: {len(sel)} frames, energy {e.min():.3f} .. {e.max():.3f} eV "
              f"(range {e.max() - e.min():.3f} eV), force std {f.std():.3f} eV/A")
    print(f"  overall force component std: {np.concatenate(forces_all).std():.3f} eV/A")


if __name__ == "__main__":
    main()
