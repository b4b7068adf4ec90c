"""Energy MAE, RMSE and mean signed error, and force MAE, of a NequIP checkpoint on an extxyz file,
as benchmarks/energy_accuracy.py reports them for e3pot (run with NequIP's own venv).

    VENV/bin/python benchmarks/peers/nequip_energy_errors.py RUN_DIR TEST.extxyz [VAL.extxyz]

RUN_DIR is the folder of run_nequip_*.sh's training run; the best checkpoint (``epoch=*.ckpt``,
the one NequIP's own test step restores) is scored.
"""
import glob
import json
import os
import sys

import numpy as np
from ase.io import read
from nequip.integrations.ase import NequIPCalculator


def errors(calc, frames):
    e_err, f_err = [], []
    for atoms in frames:
        ref_e, ref_f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = calc
        e_err.append(1000 * (atoms.get_potential_energy() - ref_e))
        f_err.append(1000 * (atoms.get_forces() - ref_f).ravel())
    e_err, f_err = np.array(e_err), np.concatenate(f_err)
    return {"n": len(frames), "energy_mae_meV": float(np.abs(e_err).mean()),
            "energy_rmse_meV": float(np.sqrt((e_err ** 2).mean())), "energy_mean_meV": float(e_err.mean()),
            "energy_std_meV": float(e_err.std()), "forces_mae_meV_A": float(np.abs(f_err).mean())}


def main(run_dir, *files):
    (ckpt,) = [p for p in glob.glob(os.path.join(run_dir, "epoch=*.ckpt"))][-1:]
    calc = NequIPCalculator._from_saved_model(ckpt, device="cpu")
    out = {"checkpoint": ckpt}
    for path in files:
        out[os.path.basename(path)] = errors(calc, read(path, ":"))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
