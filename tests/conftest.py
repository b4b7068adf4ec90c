"""Tiny models and small structures shared by the tests (float64 unless a test says otherwise)."""
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from e3pot.data.graph import collate
from e3pot.data.neighbors import SpeciesMap, atoms_to_graph
from e3pot.model.potential import E3Potential

SPECIES = [1, 6, 8, 14]


def make_model(parity=True, l_max=2, r_max=3.5, seed=0, dtype=torch.float64, **kwargs):
    torch.manual_seed(seed)
    defaults = dict(num_features=6, num_layers=2, num_basis=6, radial_hidden=16, radial_layers=1)
    defaults.update(kwargs)
    model = E3Potential(SPECIES, r_max=r_max, l_max=l_max, parity=parity, avg_num_neighbors=4.0,
                        energy_shift=[-13.0, -1030.0, -2040.0, -100.0], energy_scale=1.3, **defaults)
    # Perturb the default (zero) output so that the tests see a non-trivial function.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.to(dtype).eval()


@pytest.fixture(scope="session", params=[True, False], ids=["parity", "no-parity"])
def model(request):
    return make_model(parity=request.param)


@pytest.fixture(scope="session")
def model64():
    return make_model()


def graph_of(atoms, model):
    return collate([atoms_to_graph(atoms, SpeciesMap(model.atomic_numbers), model.r_max)]).to(dtype=model.dtype)


@pytest.fixture
def ethanol():
    atoms = molecule("CH3CH2OH")
    atoms.positions += np.random.default_rng(1).normal(scale=0.1, size=atoms.positions.shape)
    return atoms


@pytest.fixture
def periodic():
    """A small, skewed, periodic cell (smaller than 2 r_max, so several images of each atom)."""
    rng = np.random.default_rng(2)
    cell = np.array([[3.1, 0.0, 0.0], [0.4, 3.3, 0.0], [-0.3, 0.2, 3.0]])
    frac = rng.uniform(size=(5, 3))
    return Atoms("SiOOCH", scaled_positions=frac, cell=cell, pbc=True)


@pytest.fixture(scope="session")
def aoti_package(tmp_path_factory):
    """(model file, TorchScript export, AOTInductor package) of one tiny float64 model (l_max 1, 2 layers), the
    package written by the command line (``-o *.pt2`` says the format). Compiling it takes over a minute, so
    it is made once for the session: tests/test_aoti.py and tests/test_lammps.py share it."""
    import time

    from e3pot.cli.export import main as export_main
    from e3pot.model.export import export_model
    from e3pot.model.io import save_model

    folder = tmp_path_factory.mktemp("aoti")
    model_path = save_model(make_model(num_layers=2, l_max=1), str(folder / "model.pt"))
    ts_path = export_model(make_model(num_layers=2, l_max=1), str(folder / "model.ts"))
    path = str(folder / "model.pt2")
    start = time.perf_counter()
    assert export_main([model_path, "-o", path]) == 0
    print(f"AOTInductor export: {time.perf_counter() - start:.0f} s")
    return model_path, ts_path, path


def assert_same_predictions(reference: str, other: str, rel: float = 1e-10) -> None:
    """Two files written by ``e3pot predict`` for the same structures hold the same energies, forces and stress
    (stress only for periodic structures)."""
    from ase.io import read

    for a, b in zip(read(reference, ":"), read(other, ":"), strict=True):
        assert b.info["e3pot_energy"] == pytest.approx(a.info["e3pot_energy"], rel=rel)
        np.testing.assert_allclose(b.arrays["e3pot_forces"], a.arrays["e3pot_forces"], atol=1e-8)
        if a.pbc.any():
            np.testing.assert_allclose(b.info["e3pot_stress"], a.info["e3pot_stress"], rtol=1e-8, atol=1e-12)
        else:
            assert "e3pot_stress" not in b.info
