"""EGNN baseline: E(n)-equivariant message passing on scalars and coordinates.

After Satorras, Hoogeboom and Welling, "E(n) Equivariant Graph Neural Networks", ICML 2021
(Eqs. 3-6). Per layer, with edges j -> i and edge vectors r_ij = x_j - x_i (+ periodic shift):

    m_ij = phi_e(h_i, h_j, a_ij, |r_ij|^2) u(r_ij)
    x_i <- x_i + C sum_j r_ij phi_x(m_ij) u(r_ij)             (kept as updated edge vectors)
    h_i <- h_i + phi_h(h_i, C sum_j m_ij)

``a_ij`` is the Bessel basis of the input distance with the cutoff envelope u, which also
multiplies every message, so that energy and forces are smooth as a neighbour crosses r_max
(the paper's fully connected graphs need no cutoff). The updated coordinates enter only as edge
vectors r_ij + dx_j - dx_i, which keeps periodic images right. The features h stay scalars and
the coordinate updates rotate with the input, so the per-atom energies read out of h are
invariant under rotations, reflections, translations and permutations; forces are -dE/dx from
:mod:`e3pot.model.forces`, as for every kind.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from e3nn.util.jit import compile_mode
from torch import Tensor, nn

from e3pot.data.graph import AtomicGraph
from e3pot.model.base import EnergyModel, default_dtype
from e3pot.nn.radial import RadialEmbedding
from e3pot.nn.scatter import scatter_sum


def _mlp(sizes: List[int], last_activation: Optional[nn.Module] = None) -> nn.Sequential:
    layers: List[nn.Module] = []
    for k in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[k], sizes[k + 1]))
        if k < len(sizes) - 2:
            layers.append(nn.SiLU())
    if last_activation is not None:
        layers.append(last_activation)
    return nn.Sequential(*layers)


@compile_mode("script")
class EGNNLayer(nn.Module):
    """One EGNN layer on scalar features (n_atoms, num_features) and edge vectors (n_edges, 3) Å.

    Args:
        num_features: width of h and of the messages.
        num_basis: number of radial basis functions in the edge attributes.
        hidden: width of the hidden layer of each MLP.
        r_max: cutoff in Å (scales the squared distance fed to the edge MLP).
        norm: C, the factor on the neighbour sums (1 / average number of neighbours).
        update_positions: update the coordinates (the last layer does not need to).
    """

    def __init__(self, num_features: int, num_basis: int, hidden: int, r_max: float, norm: float,
                 update_positions: bool = True):
        super().__init__()
        self.edge_mlp = _mlp([2 * num_features + num_basis + 1, hidden, num_features], nn.SiLU())
        self.node_mlp = _mlp([2 * num_features, hidden, num_features])
        self.coord_mlp = _mlp([num_features, hidden, 1], nn.Tanh())
        self.inv_r2 = 1.0 / (r_max * r_max)
        self.norm = float(norm)
        self.update_positions = update_positions

    def forward(self, h: Tensor, vec: Tensor, edge_attr: Tensor, envelope: Tensor, sender: Tensor,
                receiver: Tensor) -> Tuple[Tensor, Tensor]:
        d2 = (vec * vec).sum(-1, keepdim=True) * self.inv_r2  # (n_edges, 1)
        envelope = envelope.unsqueeze(-1)
        m = self.edge_mlp(torch.cat([h[receiver], h[sender], edge_attr, d2], dim=-1)) * envelope
        n_atoms = h.shape[0]
        h = h + self.node_mlp(torch.cat([h, self.norm * scatter_sum(m, receiver, n_atoms)], dim=-1))
        if self.update_positions:
            dx = self.norm * scatter_sum(vec * (self.coord_mlp(m) * envelope), receiver, n_atoms)  # (n_atoms, 3)
            vec = vec + dx[sender] - dx[receiver]
        return h, vec


@compile_mode("script")
class EGNNPotential(EnergyModel):
    """EGNN interatomic potential (a baseline for comparisons with :class:`~e3pot.model.potential.E3Potential`).

    Args:
        atomic_numbers: the elements the model knows, in species-index order.
        r_max: cutoff radius in Å.
        num_features: width of the scalar features.
        num_layers: number of EGNN layers.
        num_basis, cutoff_p: Bessel functions and envelope exponent of the edge attributes.
        radial_hidden: width of the hidden layer of every MLP.
        update_positions: let the layers update the coordinates (E(n)-equivariant); without it the
            model sees distances only.
        avg_num_neighbors, energy_shift, energy_scale: as for ``E3Potential``.
    """

    kind = "egnn"

    def __init__(self, atomic_numbers: List[int], r_max: float = 5.0, num_features: int = 32, num_layers: int = 4,
                 num_basis: int = 8, cutoff_p: int = 6, radial_hidden: int = 64, update_positions: bool = True,
                 avg_num_neighbors: float = 1.0, energy_shift: Optional[List[float]] = None,
                 energy_scale: float = 1.0):
        super().__init__()
        if num_layers < 1 or num_features < 1 or num_basis < 1 or radial_hidden < 1:
            raise ValueError(f"invalid sizes: num_layers={num_layers}, num_features={num_features}, "
                             f"num_basis={num_basis}, radial_hidden={radial_hidden}")
        if avg_num_neighbors <= 0:
            raise ValueError(f"avg_num_neighbors must be > 0, got {avg_num_neighbors}")
        with default_dtype(torch.float64):
            self._init_species(atomic_numbers, r_max, energy_shift, energy_scale, dict(
                num_features=num_features, num_layers=num_layers, num_basis=num_basis, cutoff_p=cutoff_p,
                radial_hidden=radial_hidden, update_positions=update_positions,
                avg_num_neighbors=float(avg_num_neighbors)))
            self.radial = RadialEmbedding(r_max, num_basis, cutoff_p)
            self.embedding = nn.Linear(self.num_species, num_features, bias=False)
            self.layers = nn.ModuleList([
                EGNNLayer(num_features, num_basis, radial_hidden, r_max, 1.0 / avg_num_neighbors,
                          update_positions and k < num_layers - 1)
                for k in range(num_layers)])
            self.readout = _mlp([num_features, radial_hidden, 1])

    def forward(self, graph: AtomicGraph) -> Tensor:
        """Per-atom energies (n_atoms,) in eV, float64."""
        sender, receiver = graph.edge_index[0], graph.edge_index[1]
        vec = (graph.positions[sender] - graph.positions[receiver] + graph.edge_shift).to(self.energy_scale.dtype)
        r = torch.linalg.vector_norm(vec, dim=-1)
        edge_attr = self.radial(r)  # (n_edges, num_basis), enveloped
        envelope = self.radial.cutoff(r)  # (n_edges,)
        h = self.embedding(self.onehot(graph.species))
        for layer in self.layers:
            h, vec = layer(h, vec, edge_attr, envelope, sender, receiver)
        return self.scale_shift(self.readout(h).squeeze(-1), graph.species)
