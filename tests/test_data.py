"""Reading structures, units, splits, and the errors bad data gets."""
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from ase.units import kcal, mol

from e3pot.data.io import DataError, LabelSpec, count_frames, iter_labelled, read_frames
from e3pot.data.neighbors import SpeciesMap
from e3pot.train.datamodule import E3PotDataModule
from e3pot.predict import predict
from tests.conftest import make_model


def labelled(n=6, seed=0, with_forces=True, with_energy=True):
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        atoms = molecule("H2O")
        atoms.positions += rng.normal(scale=0.05, size=(3, 3))
        results = {}
        if with_energy:
            results["energy"] = -10.0 - 0.1 * k
        if with_forces:
            results["forces"] = rng.normal(size=(3, 3))
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    return frames


def test_extxyz_and_traj_and_db_roundtrip(tmp_path):
    frames = labelled()
    for ext in ("extxyz", "traj", "db"):
        path = str(tmp_path / f"d.{ext}")
        write(path, frames)
        read = read_frames(path, require=("energy", "forces"))
        assert len(read) == 6
        assert read[3].energy == pytest.approx(-10.3)
        np.testing.assert_allclose(read[2].forces, frames[2].get_forces(), atol=1e-7)


def test_custom_keys_and_units(tmp_path):
    atoms = molecule("H2O")
    atoms.info["E_dft"] = -2.0
    atoms.arrays["F_dft"] = np.ones((3, 3))
    path = str(tmp_path / "k.extxyz")
    write(path, [atoms])
    frame = read_frames(path, LabelSpec(energy_key="E_dft", forces_key="F_dft", energy_unit="Hartree",
                                        length_unit="Bohr"))[0]
    assert frame.energy == pytest.approx(-2.0 * 27.211386, rel=1e-6)
    np.testing.assert_allclose(frame.forces, 27.211386 / 0.52917721 * np.ones((3, 3)), rtol=1e-6)
    np.testing.assert_allclose(frame.positions, atoms.positions * 0.52917721, rtol=1e-6)


def write_npz(path, n=20, energies=None):
    rng = np.random.default_rng(0)
    coords = molecule("CH3CH2OH").positions[None] + rng.normal(scale=0.05, size=(n, 9, 3))
    np.savez(path, coords=coords, nuclear_charges=molecule("CH3CH2OH").numbers.astype(np.uint8),
             energies=rng.normal(size=n) - 97000.0 if energies is None else energies,
             forces=rng.normal(size=(n, 9, 3)))
    return coords


def test_rmd17_npz_kcal(tmp_path):
    path = str(tmp_path / "rmd17_x.npz")
    write_npz(path)
    raw = np.load(path)
    frames = read_frames(path, LabelSpec(energy_unit="kcal/mol"), require=("energy", "forces"))
    assert len(frames) == 20
    assert frames[4].energy == pytest.approx(raw["energies"][4] * kcal / mol)
    np.testing.assert_allclose(frames[4].forces, raw["forces"][4] * kcal / mol)
    assert not frames[0].pbc.any()


def test_iter_labelled_converts_labels_into_the_structures(tmp_path):
    """The reader of e3pot predict: labels where the options say, in eV, eV/Å and eV/Å^3, as the
    structures' calculator results; the input's label entries are not carried along."""
    from ase.build import bulk
    from ase.units import GPa

    si = bulk("Si", "diamond", a=5.4 / 0.52917721)  # in Bohr
    si.info.update(E_ha=-0.5, S_gpa=np.array([1.0, 2.0, 3.0, 0.1, 0.2, 0.3]), config_type="bulk")
    si.arrays["F_ha"] = np.ones((2, 3))
    path = str(tmp_path / "si.extxyz")
    write(path, [si])
    labels = LabelSpec(energy_key="E_ha", forces_key="F_ha", stress_key="S_gpa", energy_unit="Hartree",
                       length_unit="Bohr", stress_unit="GPa")
    ((source, atoms, frame),) = list(iter_labelled(path, labels))
    assert source == f"{path}, frame 0"
    assert atoms.get_potential_energy() == pytest.approx(-0.5 * 27.211386, rel=1e-6) == frame.energy
    np.testing.assert_allclose(atoms.get_forces(), 27.211386 / 0.52917721 * np.ones((2, 3)), rtol=1e-6)
    np.testing.assert_allclose(atoms.get_stress(), np.array([1.0, 2.0, 3.0, 0.1, 0.2, 0.3]) * GPa, rtol=1e-12)
    assert atoms.cell.lengths() == pytest.approx(si.cell.lengths() * 0.52917721, rel=1e-7)
    assert atoms.info == {"config_type": "bulk"} and "F_ha" not in atoms.arrays
    # the default options give the structures as read
    write(path, labelled(2))
    for _, atoms, frame in iter_labelled(path):
        assert atoms.get_potential_energy() == frame.energy and "forces" not in atoms.arrays


def test_iter_labelled_npz_leaves_nan_labels_to_the_caller(tmp_path):
    path = str(tmp_path / "nan.npz")
    energies = np.zeros(6)
    energies[4] = np.nan
    coords = write_npz(path, n=6, energies=energies)
    items = list(iter_labelled(path, LabelSpec(energy_unit="kcal/mol")))
    assert count_frames([path]) == 6 and len(items) == 6
    source, atoms, frame = items[4]
    assert source == f"{path}, frame 4" and np.isnan(frame.energy)
    np.testing.assert_allclose(atoms.positions, coords[4])
    assert not atoms.pbc.any() and atoms.get_forces().shape == (9, 3)


def test_split_is_seeded_and_n_train_takes_first(tmp_path):
    path = str(tmp_path / "d.npz")
    write_npz(path, n=20)

    def sources(**kw):
        dm = E3PotDataModule(path, r_max=3.0, **kw)
        dm.setup()
        return dm.train_set.sources, dm.val_set.sources

    t1, v1 = sources(n_val=5, split_seed=3)
    t2, v2 = sources(n_val=5, split_seed=3)
    t3, _ = sources(n_val=5, split_seed=4)
    t4, v4 = sources(n_val=5, split_seed=3, n_train=7)
    assert (t1, v1) == (t2, v2) and t1 != t3
    assert len(v1) == 5 and len(t1) == 15 and not set(t1) & set(v1)
    assert t4 == t1[:7] and v4 == v1


# -- bad input ----------------------------------------------------------------------------
def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no such data file: nowhere.xyz"):
        read_frames("nowhere.xyz")


def test_missing_labels_name_frame(tmp_path):
    path = str(tmp_path / "nolabels.extxyz")
    write(path, [molecule("H2O")] * 3)
    with pytest.raises(DataError, match=r"nolabels.extxyz, frame 0: no energy label"):
        read_frames(path, require=("energy",))
    frames = labelled(4)
    frames[2].calc = SinglePointCalculator(frames[2], energy=1.0)
    write(path, frames)
    with pytest.raises(DataError, match=r"frame 2: no forces label"):
        read_frames(path, require=("energy", "forces"))


@pytest.mark.parametrize("what", ["positions", "energy", "forces"])
def test_nan_and_inf_name_frame(tmp_path, what):
    frames = labelled(5)
    bad = frames[3]
    if what == "positions":
        bad.positions[1, 0] = np.nan
    elif what == "energy":
        bad.calc = SinglePointCalculator(bad, energy=np.inf, forces=bad.get_forces())
    else:
        f = bad.get_forces().copy()
        f[0, 2] = np.nan
        bad.calc = SinglePointCalculator(bad, energy=1.0, forces=f)
    path = str(tmp_path / "nan.extxyz")
    write(path, frames)
    with pytest.raises(DataError, match=rf"nan.extxyz, frame 3: {what} contain NaN or inf"):
        read_frames(path)


def test_nan_in_npz_names_frame(tmp_path):
    path = str(tmp_path / "nan.npz")
    energies = np.zeros(20)
    energies[11] = np.nan
    write_npz(path, energies=energies)
    with pytest.raises(DataError, match=r"nan.npz, frame 11: energy contain NaN"):
        read_frames(path)


def test_pbc_with_zero_cell(tmp_path):
    atoms = Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]], pbc=True)
    path = str(tmp_path / "zero.extxyz")
    write(path, [molecule("H2O"), atoms])
    with pytest.raises(DataError, match=r"zero.extxyz, frame 1: periodic boundaries .* periodic cell vectors are zero"):
        read_frames(path)


def test_empty_dataset(tmp_path):
    path = tmp_path / "empty.extxyz"
    path.write_text("")
    with pytest.raises(DataError, match="empty.extxyz: contains no structures"):
        read_frames(str(path))


def test_split_without_validation_frames(tmp_path):
    path = str(tmp_path / "two.extxyz")
    write(path, labelled(2))
    dm = E3PotDataModule(path, val_fraction=0.1, r_max=3.0)
    with pytest.raises(DataError, match=r"2 frames cannot be split into training and 0 validation frames"):
        dm.setup()


def test_unknown_element_at_prediction_names_it():
    model = make_model()  # knows H, C, O, Si
    with pytest.raises(DataError, match=r"structure 1: element\(s\) Fe, N not known to the model \(trained on H, C, O, Si\)"):
        predict(model, [molecule("H2O"), Atoms("FeNH", positions=np.eye(3) * 1.5)])


def test_species_map_order():
    m = SpeciesMap([1, 6, 8])
    assert m(np.array([8, 1, 6, 1])).tolist() == [2, 0, 1, 0]
