"""The potential: embed -> interact x N -> read out -> scale/shift per atom.

Total energy is the sum of the per-atom energies; forces and stress come from
:mod:`e3pot.model.forces`, never from a separate head.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from e3nn import o3
from e3nn.util.jit import compile_mode
from torch import Tensor, nn

from e3pot.data.graph import AtomicGraph
from e3pot.model.base import EnergyModel, default_dtype
from e3pot.nn.interaction import Interaction
from e3pot.nn.radial import RadialEmbedding, fused_radial


def hidden_irreps(num_features: int, l_max: int, parity: bool) -> o3.Irreps:
    """``num_features`` channels of every l <= l_max; both parities when ``parity``, else (-1)^l only."""
    parts = []
    for l in range(l_max + 1):
        for p in ((1, -1) if parity else ((-1) ** l,)):
            parts.append((num_features, (l, p)))
    return o3.Irreps(parts).sort().irreps.simplify()


@compile_mode("script")
class E3Potential(EnergyModel):
    """NequIP-style E(3)-equivariant interatomic potential.

    Args:
        atomic_numbers: the elements the model knows, in species-index order.
        r_max: cutoff radius in Å.
        l_max: highest spherical-harmonic order of edges and features.
        num_features: channels per irrep in the hidden features.
        num_layers: number of interaction blocks.
        num_basis: number of Bessel radial basis functions.
        cutoff_p: exponent of the polynomial cutoff envelope.
        radial_hidden, radial_layers: width and depth of each radial MLP.
        parity: keep features of both parities for every l (full O(3) features).
        avg_num_neighbors: fitted on the training data; normalises neighbour sums.
        energy_shift: per-species energy in eV (fitted E0s), in ``atomic_numbers`` order; kept
            and added in float64 in any model dtype.
        energy_scale: eV, multiplies the network output (fitted force RMS).
        heads: read-out heads on the shared features (a shallow ensemble, :mod:`e3pot.model.ensemble`).
            The energy is the mean of the heads; their spread is the model's uncertainty. 1: one read-out.

    The model is built in float64, so that e3nn's Clebsch-Gordan and normalisation constants
    are exact in either precision; cast it with ``.to(torch.float32)`` for float32 use.
    """

    kind = "e3"

    def __init__(self, atomic_numbers: List[int], r_max: float = 5.0, l_max: int = 2, num_features: int = 32,
                 num_layers: int = 4, num_basis: int = 8, cutoff_p: int = 6, radial_hidden: int = 64,
                 radial_layers: int = 2, parity: bool = True, avg_num_neighbors: float = 1.0,
                 energy_shift: Optional[List[float]] = None, energy_scale: float = 1.0, heads: int = 1):
        super().__init__()
        with default_dtype(torch.float64):
            self._build(atomic_numbers, r_max, l_max, num_features, num_layers, num_basis, cutoff_p,
                        radial_hidden, radial_layers, parity, avg_num_neighbors, energy_shift, energy_scale, heads)

    def _build(self, atomic_numbers, r_max, l_max, num_features, num_layers, num_basis, cutoff_p,
               radial_hidden, radial_layers, parity, avg_num_neighbors, energy_shift, energy_scale, heads) -> None:
        if l_max < 0 or num_layers < 1 or num_features < 1:
            raise ValueError(f"invalid sizes: l_max={l_max}, num_layers={num_layers}, num_features={num_features}")
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
            raise ValueError(f"heads must be a positive integer, got {heads!r}")
        config = dict(l_max=l_max, num_features=num_features, num_layers=num_layers, num_basis=num_basis,
                      cutoff_p=cutoff_p, radial_hidden=radial_hidden, radial_layers=radial_layers, parity=parity,
                      avg_num_neighbors=float(avg_num_neighbors), heads=heads)
        self._init_species(atomic_numbers, r_max, energy_shift, energy_scale, self._config(**config))
        self.num_heads = heads
        n_species = self.num_species

        self.irreps_sh = o3.Irreps.spherical_harmonics(l_max)
        self.sh = o3.SphericalHarmonics(self.irreps_sh, normalize=True, normalization="component")
        self.radial = RadialEmbedding(r_max, num_basis, cutoff_p)
        self.embedding = o3.Linear(o3.Irreps(f"{n_species}x0e"), o3.Irreps(f"{num_features}x0e"))
        target = hidden_irreps(num_features, l_max, parity)
        layers, irreps = [], self.embedding.irreps_out
        for k in range(num_layers):
            # The readout sees only the scalars of the last layer, so that layer makes nothing else.
            layer_target = target if k < num_layers - 1 else o3.Irreps(f"{num_features}x0e")
            layer = Interaction(irreps, self.irreps_sh, layer_target, n_species, num_basis * self.edge_channels,
                                radial_hidden, radial_layers, avg_num_neighbors)
            layers.append(layer)
            irreps = layer.irreps_out
        self.layers = nn.ModuleList(layers)
        self.fuse_radial = True  # all layers' radial networks in one pass (False once they are tables)
        self.readout = o3.Linear(irreps, o3.Irreps(f"{heads}x0e"))
        if self.readout.weight_numel == 0:
            raise ValueError(f"readout: final irreps {irreps} contain no 0e scalars")

    edge_channels = 1  # radial features per basis function (the Cartesian kind adds three directions)

    def _config(self, **config):
        """The hyperparameters stored in ``config`` (subclasses drop those they fix)."""
        return config

    def forward(self, graph: AtomicGraph) -> Tensor:
        """Per-atom energies (n_atoms,) in eV, float64: :meth:`embed`, each layer's
        :meth:`~e3pot.nn.interaction.Interaction.propagate`, :meth:`atomic_energies`. Chunked evaluation
        (:mod:`e3pot.model.chunked`) runs the same three steps, the layers chunk by chunk."""
        return self.atomic_energies(self.features(graph), graph.species)

    @torch.jit.export
    def embed(self, species: Tensor) -> Tuple[Tensor, Tensor]:
        """Features entering the first layer (n_atoms, dim) and the one-hot species (n_atoms, n_species)."""
        onehot = self.onehot(species)
        return self.embedding(onehot), onehot

    def chunk_sizes(self) -> List[Tuple[int, int]]:
        return [(layer.edge_floats(), layer.irreps_in.dim) for layer in self.layers]

    @torch.jit.export
    def edge_features(self, positions: Tensor, sender: Tensor, receiver: Tensor,
                      edge_shift: Tensor) -> Tuple[Tensor, Tensor]:
        """Spherical harmonics (n_edges, irreps_sh.dim) and radial basis (n_edges, num_basis) of the edges."""
        return self.edge_embedding(positions[sender] - positions[receiver] + edge_shift)

    @torch.jit.export
    def edge_embedding(self, vec: Tensor) -> Tuple[Tensor, Tensor]:
        """Spherical harmonics and radial basis of edge vectors (n_edges, 3) Å. Vectors may come in float64
        (positions of a large box keep their precision that way) and are cast to the model dtype here."""
        vec = vec.to(self.energy_scale.dtype)
        return self.sh(vec), self.radial(torch.linalg.vector_norm(vec, dim=-1))

    @torch.jit.export
    def atomic_energies(self, h: Tensor, species: Tensor) -> Tensor:
        """Read-out of the last layer's features (n_atoms, dim) into per-atom energies (n_atoms,), float64:
        the mean of the heads."""
        return self.scale_shift(self.readout(h).mean(-1), species)

    def features(self, graph: AtomicGraph) -> Tensor:
        """The invariant features the read-out sees (n_atoms, num_features): the last layer's scalars."""
        sh, radial = self.edge_features(graph.positions, graph.edge_index[0], graph.edge_index[1], graph.edge_shift)
        h, onehot = self.embed(graph.species)
        if not self.fuse_radial:  # tabulated radial networks (e3pot.model.tables)
            for layer in self.layers:
                h = layer(h, onehot, sh, radial, graph.edge_index)
            return h
        weights = self.radial_weights(radial)
        sender, receiver = graph.edge_index[0], graph.edge_index[1]
        for k, layer in enumerate(self.layers):
            h = layer.update(h, onehot, layer.linear_in(h), sh, weights[k], sender, receiver)
        return h

    @torch.jit.export
    def radial_weights(self, radial: Tensor) -> List[Tensor]:
        """Every layer's per-edge tensor-product weights (n_edges, weight_numel) from the radial basis
        (n_edges, num_basis), all radial networks evaluated together (:func:`~e3pot.nn.radial.fused_radial`)."""
        matrices: List[List[Tensor]] = []
        for layer in self.layers:
            matrices.append(layer.radial_matrices())
        return fused_radial(radial, matrices)

    def head_energies(self, graph: AtomicGraph) -> Tensor:
        """Per-atom energies of every head (n_atoms, heads) in eV, float64 (eager use; the shallow ensemble's
        uncertainty, :mod:`e3pot.model.ensemble`)."""
        out = self.readout(self.features(graph)) * self.energy_scale
        return out.to(torch.float64) + self.energy_shift[graph.species].unsqueeze(-1)


@compile_mode("script")
class CartesianPotential(E3Potential):
    """The same message passing with nothing built in: scalar features only, and the edge direction
    fed to the radial networks as raw Cartesian components instead of spherical harmonics.

    Each Bessel function b_n(r) (with the cutoff envelope) comes four times, as b_n, b_n x/r,
    b_n y/r and b_n z/r, so the per-edge weights depend on the direction in the lab frame. Energy
    is invariant to translations and permutations only; rotations must be learned from data (see
    the ``augment`` option of the data module). Takes the arguments of :class:`E3Potential` except
    ``l_max`` and ``parity``.
    """

    kind = "cartesian"
    edge_channels = 4

    def __init__(self, atomic_numbers: List[int], r_max: float = 5.0, num_features: int = 32, num_layers: int = 4,
                 num_basis: int = 8, cutoff_p: int = 6, radial_hidden: int = 64, radial_layers: int = 2,
                 avg_num_neighbors: float = 1.0, energy_shift: Optional[List[float]] = None,
                 energy_scale: float = 1.0, heads: int = 1):
        super().__init__(atomic_numbers, r_max=r_max, l_max=0, num_features=num_features, num_layers=num_layers,
                         num_basis=num_basis, cutoff_p=cutoff_p, radial_hidden=radial_hidden,
                         radial_layers=radial_layers, parity=False, avg_num_neighbors=avg_num_neighbors,
                         energy_shift=energy_shift, energy_scale=energy_scale, heads=heads)

    def _config(self, **config):
        return {k: v for k, v in config.items() if k not in ("l_max", "parity")}

    @torch.jit.export
    def edge_embedding(self, vec: Tensor) -> Tuple[Tensor, Tensor]:
        """Constant l=0 harmonics and the radial basis times (1, x/r, y/r, z/r): (n_edges, 4 num_basis)."""
        vec = vec.to(self.energy_scale.dtype)
        r = torch.linalg.vector_norm(vec, dim=-1)
        basis = self.radial(r)  # (n_edges, num_basis)
        directions = torch.cat([torch.ones_like(r).unsqueeze(-1), vec / r.unsqueeze(-1)], dim=-1)  # (n_edges, 4)
        features = (directions.unsqueeze(-1) * basis.unsqueeze(1)).flatten(1)  # also for no edges
        return self.sh(vec), features
