"""The physics battery of :mod:`e3pot.testing` on every model kind x dtype x runtime x kernel backend,
on the documented custom model, and on deliberately flawed models, each of which must fail the check
that names its flaw (and only that one)."""
import re

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

import e3pot.testing
from e3pot.model.compiled import compile_model
from e3pot.model.kernels import cueq_installed, kernels_of, use_kernels
from e3pot.predict import predict
from e3pot.testing import CHECKS, ModelTests, check_model, failed_checks, random_model
from e3pot.testing.flawed import FAILS, DetachedPair
from tests.trained_model import single_torch_thread  # noqa: F401  (autouse: one torch thread)

KINDS = {
    "e3": dict(kind="e3"),
    "e3-no-parity": dict(kind="e3", parity=False),
    "invariant": dict(kind="e3", l_max=0),
    "shallow-ensemble": dict(kind="e3", heads=3),  # its mean; the spread's symmetry: tests/test_uncertainty.py
    "cartesian": dict(kind="cartesian"),
    "egnn": dict(kind="egnn"),
}
BY_DESIGN = {"cartesian": frozenset({"rotation", "rotoreflection"})}  # nothing built in: must fail these
# Kernel backends of the edge convolution (e3pot.model.kernels): cueq where cuEquivariance is installed, on two
# kinds with that convolution (tests/test_cueq.py shows every such kind equal to its torch run to 1e-10).
BACKENDS = ["torch"] + (["cueq"] if cueq_installed() else [])
VARIANTS = [(k, b) for k in KINDS for b in BACKENDS if b == "torch" or k in ("e3", "invariant")]


class TestEveryKind(ModelTests):
    """Each kind, eager, in float32 and float64, with each kernel backend."""

    @pytest.fixture(scope="class", params=VARIANTS, ids=[f"{k}-{b}" for k, b in VARIANTS])
    def variant(self, request):
        return request.param  # (kind, backend)

    @pytest.fixture(scope="class")
    def model(self, variant):
        kind, backend = variant
        model = use_kernels(random_model(**KINDS[kind]), backend)
        assert kernels_of(model) == (None if kind == "egnn" else backend)
        return model

    @pytest.fixture(scope="class")
    def expected_failures(self, variant):
        return BY_DESIGN.get(variant[0], frozenset())


@pytest.fixture(scope="module")
def compiled_e3():
    """One Inductor-compiled e3 model in float64, shared by every check of the compiled runtime."""
    return compile_model(random_model("e3"))


@pytest.mark.slow
class TestCompiledE3(ModelTests):
    """The compiled runtime (e3, float64), compiled once: every call computes stress and runs a batch."""

    @pytest.fixture(scope="class")
    def model(self, compiled_e3):
        return compiled_e3

    @pytest.fixture(scope="class")
    def dtype(self):
        return "float64"

    @pytest.fixture(scope="class")
    def skipped_checks(self):
        return {"batch": "one structure alone is another compiled graph (about a minute more to compile); "
                         "tests/test_compiled.py checks that graph and the batch one against the eager model"}

    def test_compiled_once(self, compiled_e3):
        """The checks share one compiled graph, whichever runs first."""
        report = check_model(compiled_e3, checks=[c for c in CHECKS if c != "batch"])
        assert report.passed and report.model == "CompiledModel", report.table()
        assert compiled_e3.compilations == 1


# -- the documented example: a user's own model --------------------------------------------------------

def documented_examples():
    """The code blocks of :mod:`e3pot.testing`'s docstring (after each ``::``), dedented."""
    blocks = re.findall(r"::\n\n((?:    .*\n|\n)+)", e3pot.testing.__doc__)
    return [re.sub(r"(?m)^    ", "", b) for b in blocks]


def documented_namespace():
    namespace = {}
    exec(documented_examples()[0], namespace)  # the model's definition
    return namespace


class TestDocumentedModel(ModelTests):
    @pytest.fixture(scope="class")
    def model(self):
        return documented_namespace()["PairModel"]([1, 6, 8])


def test_documented_example_runs():
    definition, check, subclass = documented_examples()
    namespace = {}
    exec(definition + check + subclass, namespace)  # asserts that the report passed
    assert namespace["report"].passed and len(namespace["report"]) > 20
    assert issubclass(namespace["TestPairModel"], ModelTests)


# -- the battery can fail ------------------------------------------------------------------------------

@pytest.mark.parametrize("flawed", list(FAILS), ids=lambda f: f.__name__)
def test_flawed_model_fails_its_check_only(flawed):
    report = check_model(flawed(random_model("e3")), dtype="float64")
    assert set(failed_checks(report)) == FAILS[flawed], report.table()
    assert {c.name.split(":")[0] for c in report.checks} == set(CHECKS)  # every check ran


def test_flawed_model_fails_in_float32():
    report = check_model(DetachedPair(random_model("e3")), dtype="float32", checks=["finite differences"])
    assert not report.passed and {c.dtype for c in report.checks} == {"float32"}, report.table()


def test_the_models_under_test_are_not_trivial():
    """A zero or constant energy passes every symmetry: the random models have real forces."""
    atoms = molecule("CH3OH")
    atoms.positions += np.random.default_rng(0).normal(scale=0.05, size=atoms.positions.shape)
    for kind, spec in KINDS.items():
        forces = predict(random_model(**spec), [atoms])[0]["forces"]
        assert np.sqrt((forces ** 2).sum(axis=1).mean()) > 0.2, kind


def test_nothing_to_measure_fails():
    """A check that finds nothing to measure fails, with the reason, instead of passing unseen."""
    model = random_model("e3")
    far = Atoms("CO", positions=[[0, 0, 0], [model.r_max + 1.0, 0, 0]])  # no neighbour to pull through r_max
    cell = Atoms("SiO2", positions=[[0, 0, 0], [1.6, 0, 0], [0, 1.6, 0]], cell=4.5 * np.eye(3), pbc=True)
    report = check_model(model, [far, cell], checks=["cutoff", "additivity"])
    assert [c.name for c in report.failed] == ["cutoff: nothing measured"], report.table()
    assert "r_max" in report.failed[0].note
    assert [c.name for c in report.checks if c.passed] == ["additivity: energy", "additivity: forces"]
    report = check_model(model, [cell], checks=["additivity"])
    assert [(c.name, c.passed) for c in report.checks] == [("additivity: nothing measured", False)]
    assert "no molecule" in report.checks[0].note


def test_bad_arguments():
    model = random_model("e3")
    with pytest.raises(ValueError, match="unknown checks.*'symmetry'"):
        check_model(model, checks=["symmetry"])
    with pytest.raises(ValueError, match="float16"):
        check_model(model, dtype="float16")
