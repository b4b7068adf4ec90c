"""Tolerances and step sizes of the audit, in one place (the README quotes them).

Each tolerance sits 50 to 1000 times above the largest error of a correct model in that dtype (the
``measured`` comments: the example model, the tiny trained test model and the random test models,
on the built-in structures) and far below the size of a real mistake: a term that breaks a symmetry,
a force that is not -dE/dR or an energy that jumps at the cutoff shows up as errors of 1e-3 to 1.

Energies are compared per atom in eV, not relative to the total energy: the total is dominated by
the per-species reference energies (thousands of eV for C and O), next to which a broken symmetry of
0.1 eV would be a relative error of only 1e-5.
"""
from __future__ import annotations

# -- symmetry: E(Rx + t) = E(x), F(Rx + t) = R F(x), sigma(Rx + t) = R sigma R^T, and permutations --
# measured: float32 2e-7 eV/atom, 2e-6 (forces), 2e-6 (stress); float64 1e-13 eV/atom, 1e-14, 1e-14
SYMMETRY = {
    "energy": {"float32": 1e-5, "float64": 1e-10},  # eV/atom
    "forces": {"float32": 1e-4, "float64": 1e-9},  # relative
    "stress": {"float32": 1e-4, "float64": 1e-9},  # relative
}
DRAWS = 3  # random transformations of each kind per structure and dtype; the largest error counts

# Forces and stress are compared relative to the reference, but never to less than these: rounding
# errors scale with the per-edge terms, not with a net force that nearly cancels near equilibrium.
FORCE_FLOOR = 0.1  # eV/Å, RMS per atom
STRESS_FLOOR = 0.01  # eV/Å^3 (1.6 GPa)

# -- batch and locality: a structure in a batch of others equals itself alone, and two molecules far
# apart (no edge between them) equal the sum of each. Only the order of sums differs, as in the
# symmetry checks: the same tolerances. measured (random test models of every kind): float64 1e-13 eV/atom,
# 5e-16 (forces), 1e-16 (stress); float32 0 eV/atom, 4e-8, 4e-9
CONSISTENCY = SYMMETRY
ADDITIVITY_GAP = 10.0  # Å beyond r_max between the two molecules

# -- autograd forces and stress against finite differences of the energy --
# A four-point central stencil: its truncation error goes as step^4, so the step can be large enough
# for the rounding of the energy to stay small. float32 is used only for a model that cannot be cast
# (a TorchScript export); its energies round at ~1e-6 eV, hence the larger steps.
# measured: float64 2e-9 (forces), 9e-9 (stress); float32 4e-5, 4e-5
FD = {"forces": {"float32": 1e-2, "float64": 1e-6}, "stress": {"float32": 1e-2, "float64": 1e-6}}  # relative
FD_STEP = {"float32": 1e-2, "float64": 1e-3}  # Å
FD_STRAIN = {"float32": 1e-2, "float64": 1e-4}  # dimensionless
FD_COMPONENTS = 6  # random (atom, direction) pairs per structure

# -- smoothness where a neighbour crosses r_max: the jump between the values extrapolated linearly
# from either side. A continuous function leaves ~step^2 x (difference of curvatures); a jump J leaves J.
# measured: float64 3e-12 eV, 4e-11 eV/Å; float32 3e-6 eV, 6e-6 eV/Å
SMOOTH = {"energy": {"float32": 1e-4, "float64": 1e-7},  # eV
          "forces": {"float32": 1e-3, "float64": 1e-5}}  # eV/Å, largest component
SMOOTH_STEP = {"float32": 1e-3, "float64": 1e-5}  # Å
MAX_CROSSINGS = 8

# -- NVE: VelocityVerlet from a Maxwell-Boltzmann start, total energy per atom --
# measured (200 steps): drift 0.02 meV/atom, fluctuation 0.1 meV/atom, which is Verlet's own O(dt^2)
# oscillation, so the margin here is 5x; forces that are not -dE/dR gave 6-250 and 8-35 meV/atom.
NVE_DT_FS = 0.5
NVE_TEMPERATURE_K = 300.0
NVE = {"drift": 0.5, "fluctuation": 0.5}  # meV/atom: fitted change over the run; std about the fit
