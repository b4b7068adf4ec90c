"""The call that MD engines make: energy of the atoms a process owns, in a domain padded with ghosts.

An engine with domain decomposition (LAMMPS on MPI ranks) gives each process the atoms it owns
("local") and copies of the atoms around them ("ghosts"), all with explicit positions (periodic
images are ghosts too). A ghost that is an image of an atom of the same process can instead be folded
onto that atom, with the image offset as the shift of its edges: the same energy and forces, one node
fewer (on a single process every ghost folds, and the graph is the periodic one). The process evaluates the per-atom energies
of all of them but counts those of its local atoms only,

    E_local = sum_i local[i] * e_i

and takes forces on every atom, ghosts included, as -dE_local/dx. The engine adds the ghosts' forces
to their owners (LAMMPS's reverse communication with ``newton_pair on``); the sum over processes is
the force of the whole system. A message-passing model with L layers sees L * r_max around each
atom, so the ghosts must reach that far (:func:`ghost_cutoff`).

The virial comes from the same derivatives. With ``r_e = x_j - x_i`` (the graph's edge convention)
and ``g_e = dE_local/dr_e``, the virial is ``W = -sum_e r_e (x) g_e``, and half of each edge's term
goes to each of its two atoms for the per-atom virial (LAMMPS's ``compute stress/atom``). The edge
derivatives ``g_e`` are taken through a zero edge shift, which the models add to each edge vector.

Components are in LAMMPS's order: xx, yy, zz, xy, xz, yz. Units: eV, Å, eV/Å, eV (virial).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from e3nn.util.jit import compile_mode
from torch import Tensor, nn

from e3pot.data.graph import AtomicGraph

VOIGT = [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]  # LAMMPS's order of the six virial components


def ghost_cutoff(r_max: float, num_layers: int) -> float:
    """Å of ghosts that a process needs around its own atoms: every layer passes messages one r_max further."""
    return float(r_max) * int(num_layers)


@compile_mode("script")
class LocalEnergy(nn.Module):
    """Wraps a per-atom energy model for engines: see the module's notes.

    ``forward(positions, species, edge_index, local)`` takes

    - ``positions`` (n_all, 3) Å, local atoms and ghosts, float64 (cast to the model's dtype after the
      edge vectors are formed);
    - ``species`` (n_all,) long, index into the model's species list;
    - ``edge_index`` (2, n_edges) long, [sender, receiver], a full list within r_max among all atoms;
    - ``local`` (n_all,) float64, 1 for the atoms whose energy counts, 0 for ghosts;
    - ``edge_shift`` (n_edges, 3) float64 Å, optional: added to each edge vector. A ghost that is a
      periodic image of one of the process's own atoms can be folded onto that atom: its edges then
      start at the atom, shifted by the image offset, and the ghost is no node of its own;

    and returns ``(energy (1,), forces (n_all, 3), atomic_energies (n_all,), virial (6,),
    atom_virial (n_all, 6))`` in float64.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, positions: Tensor, species: Tensor, edge_index: Tensor, local: Tensor,
                edge_shift: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        positions = positions.detach().to(torch.float64).requires_grad_(True)
        n_all = positions.shape[0]
        if edge_shift is None:
            edge_shift = torch.zeros((edge_index.shape[1], 3), dtype=positions.dtype, device=positions.device)
        edge_shift = edge_shift.detach().to(torch.float64).requires_grad_(True)
        graph = AtomicGraph(positions, species, edge_index, edge_shift,
                            torch.zeros(n_all, dtype=torch.long, device=positions.device),
                            torch.zeros((1, 3, 3), dtype=positions.dtype, device=positions.device),
                            torch.zeros((1, 3), dtype=torch.bool, device=positions.device))
        atomic = self.model(graph).to(torch.float64)  # (n_all,)
        energy = (atomic * local.to(torch.float64)).sum().reshape(1)
        grad_outputs: List[Optional[Tensor]] = [torch.ones_like(energy)]
        grads = torch.autograd.grad([energy], [positions, edge_shift], grad_outputs=grad_outputs,
                                    allow_unused=True)
        d_positions, d_shift = grads[0], grads[1]
        if d_positions is None:  # no edge: the energy does not depend on the positions
            d_positions = torch.zeros_like(positions)
        if d_shift is None:
            d_shift = torch.zeros_like(edge_shift)
        vec = (positions[edge_index[0]] - positions[edge_index[1]] + edge_shift).detach()  # (n_edges, 3) r_e
        rows = torch.tensor([0, 1, 2, 0, 0, 1], device=vec.device)  # VOIGT's rows and columns
        cols = torch.tensor([0, 1, 2, 1, 2, 2], device=vec.device)
        edge_virial = -vec[:, rows] * d_shift[:, cols]  # (n_edges, 6)
        virial = edge_virial.sum(dim=0)  # (6,)
        half = 0.5 * edge_virial
        atom_virial = torch.zeros((n_all, 6), dtype=half.dtype, device=half.device)
        atom_virial = atom_virial.index_add(0, edge_index[0], half).index_add(0, edge_index[1], half)
        return energy.detach(), -d_positions.detach(), atomic.detach(), virial.detach(), atom_virial.detach()
