"""The cuEquivariance backend of the edge convolution (:mod:`e3pot.nn.cueq`, :mod:`e3pot.model.kernels`) against
the torch one, in float64: the convolution alone, then energies, forces, stress and training gradients of every
model kind that has the convolution, the calculator and ``e3pot predict``. On the CPU cuEquivariance runs its
plain PyTorch implementation (method ``naive``); the tests named ``cuda`` run its CUDA kernel where there is a
GPU (``pytest -k cuda``, see benchmarks/gpu.sh). The physics battery runs on the cueq backend in
tests/test_battery.py."""
import zipfile

import numpy as np
import pytest
import torch
from ase.build import molecule
from e3nn import o3

pytest.importorskip("cuequivariance_torch")

from e3pot.calculator import E3PotCalculator  # noqa: E402
from e3pot.model import kernels  # noqa: E402
from e3pot.model.base import default_dtype  # noqa: E402
from e3pot.model.chunked import chunked_evaluate  # noqa: E402
from e3pot.model.compiled import CompiledModel  # noqa: E402
from e3pot.model.forces import evaluate  # noqa: E402
from e3pot.model.kernels import kernels_of, use_kernels  # noqa: E402
from e3pot.nn.cueq import CueqEdgeConvolution, ops_available  # noqa: E402
from e3pot.nn.tensor_product import EdgeTensorProductScatter  # noqa: E402
from e3pot.testing import random_model  # noqa: E402
from tests.conftest import graph_of, make_model  # noqa: E402
from tests.trained_model import model_file_64, single_torch_thread  # noqa: E402,F401  (fixtures)

TOL = 1e-10  # float64, model level
# The model kinds with an edge convolution.
KINDS = {"e3": dict(parity=True), "e3-no-parity": dict(parity=False), "invariant": dict(l_max=0), "cartesian": {}}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
cuda_kernels = pytest.mark.skipif(not (torch.cuda.is_available() and ops_available()),
                                  reason="needs a CUDA GPU and cuequivariance-ops-torch-cu12 (or -cu13)")


def tiny(kind: str, **kwargs):
    """A tiny float64 model of ``kind`` with three layers: with two, the only layer with vector inputs maps them to
    scalars, whose Clebsch-Gordan maps are diagonal, and both backends happen to add the same numbers in the same
    order (bit-for-bit equal results would not show that the test can tell them apart)."""
    if kind == "cartesian":
        return random_model("cartesian", num_layers=3, **kwargs)
    return make_model(num_layers=3, **KINDS[kind], **kwargs)


def max_diff(a, b) -> float:
    return max(float((x - y).detach().abs().max()) for x, y in zip(a, b) if x is not None)


# -- the convolution alone -------------------------------------------------------------------------------

CONVOLUTIONS = {
    "mixed": ("4x0e + 2x0o + 3x1o + 2x1e + 2x2e", "3x0e + 2x0e + 4x1o + 2x1e + 3x2e + 1x2o"),
    "scalars": ("5x0e", "3x0e + 2x0e + 4x1o + 3x2e"),
    "uniform": ("6x0e + 6x1o + 6x2e", "6x0e + 6x0e + 6x1o + 6x2e"),
}


def random_inputs(conv, n_atoms=7, n_edges=30, seed=0, device="cpu", dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_atoms, conv.irreps_in.dim, generator=g, dtype=dtype)
    sh = torch.randn(n_edges, conv.irreps_sh.dim, generator=g, dtype=dtype)
    w = torch.randn(n_edges, conv.weight_numel, generator=g, dtype=dtype)
    sender = torch.randint(0, n_atoms, (n_edges,), generator=g)
    receiver = torch.randint(0, n_atoms, (n_edges,), generator=g)
    receiver[0] = n_atoms - 1
    return [t.to(device) for t in (x, sh, w, sender, receiver)]


def convolution(name: str) -> EdgeTensorProductScatter:
    irreps_in, irreps_out = CONVOLUTIONS[name]
    with torch.random.fork_rng(devices=[]), default_dtype(torch.float64):
        torch.manual_seed(1)
        return EdgeTensorProductScatter(irreps_in, o3.Irreps.spherical_harmonics(2), irreps_out, norm=0.37)


@pytest.mark.parametrize("name", list(CONVOLUTIONS))
def test_convolution_equals_torch(name):
    """Output and first derivatives (inputs and weights) to 1e-12, on random float64 inputs: the whole graph,
    a chunk of receivers (n_out smaller than the number of sender rows), and no edges at all."""
    conv = convolution(name)
    cueq = CueqEdgeConvolution(conv)
    assert cueq.weight is conv.weight and not list(cueq.parameters())[1:]
    x, sh, w, sender, receiver = random_inputs(conv)
    inputs = [t.requires_grad_() for t in (x, sh, w)]
    want = conv(x, sh, w, sender, receiver)
    got = cueq(x, sh, w, sender, receiver)
    assert max_diff([want], [got]) < 1e-12 and float(want.detach().abs().max()) > 0.5
    probe = torch.randn_like(want)
    g_want = torch.autograd.grad((want * probe).sum(), inputs + [conv.weight])
    g_got = torch.autograd.grad((got * probe).sum(), inputs + [conv.weight])
    assert max_diff(g_want, g_got) < 1e-12

    chunk = receiver < 3  # receivers 0..2 with all their senders' rows
    args = (x, sh[chunk], w[chunk], sender[chunk], receiver[chunk], 3)
    assert max_diff([conv(*args)], [cueq(*args)]) < 1e-12
    none = (x, sh[:0], w[:0], sender[:0], receiver[:0])
    assert torch.equal(cueq(*none), conv(*none))


def test_convolution_layout():
    """The weights keep e3pot's layout (per path, ``mul`` consecutive numbers per edge): a weight vector that is
    non-zero on one path only gives the torch result of that path alone."""
    conv = convolution("mixed")
    cueq = CueqEdgeConvolution(conv, method="naive")
    x, sh, w, sender, receiver = random_inputs(conv)
    start = 0
    for (b, _, _) in conv.paths:
        mul = conv.irreps_in[b].mul
        one = torch.zeros_like(w)
        one[:, start:start + mul] = w[:, start:start + mul]
        start += mul
        want = conv(x, sh, one, sender, receiver)
        assert max_diff([want], [cueq(x, sh, one, sender, receiver)]) < 1e-12
    assert start == conv.weight_numel


# -- models ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=list(KINDS))
def pair(request):
    """(torch model, the same model with cueq kernels) of one kind."""
    model = tiny(request.param)
    return model, use_kernels(model, "cueq")


def test_energy_forces_stress_equal_torch(pair, periodic, ethanol):
    model, cueq = pair
    assert kernels_of(model) == "torch" and kernels_of(cueq) == "cueq"
    for atoms in (periodic, ethanol):
        graph = graph_of(atoms, model)
        want = evaluate(model, graph, compute_stress=atoms.pbc.any())
        got = evaluate(cueq, graph, compute_stress=atoms.pbc.any())
        assert max_diff(want, got) < TOL, max_diff(want, got)
        assert float(want.forces.abs().max()) > 0.1


def test_training_gradients_equal_torch(pair, periodic, ethanol):
    """The gradient of an energy + force loss with respect to every parameter (double backward)."""
    model, cueq = pair
    graph = graph_of(periodic, model)  # one periodic cell, with stress in the loss too

    def gradients(m):
        m.train()
        try:
            pred = evaluate(m, graph, compute_stress=True, training=True)
            loss = (pred.energy ** 2).sum() + (pred.forces ** 2).sum() + (pred.stress ** 2).sum()
            names, params = zip(*m.named_parameters())
            return dict(zip(names, torch.autograd.grad(loss, params)))
        finally:
            m.eval()

    want, got = gradients(model), gradients(cueq)
    assert list(want) == list(got)
    worst = max(float((want[k] - got[k]).abs().max()) for k in want)
    assert worst < TOL, worst
    assert all(float(want[k].abs().max()) > 0 for k in want if ".conv." in k)


def test_chunked_path_equals_direct_torch(pair, periodic):
    model, cueq = pair
    graph = graph_of(periodic, model)
    want = evaluate(model, graph, compute_stress=True)
    assert max_diff(want, chunked_evaluate(cueq, graph, True, 13)) < TOL


def test_float32(periodic):
    model = tiny("e3")
    cueq = use_kernels(model, "cueq").to(torch.float32)
    graph = graph_of(periodic, cueq)
    want = evaluate(model.to(torch.float32), graph, compute_stress=True)
    got = evaluate(cueq, graph, compute_stress=True)
    for a, b in zip(want, got):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# -- the switch --------------------------------------------------------------------------------------------

def test_model_file_does_not_change(tmp_path, ethanol):
    """State dict and config are those of the torch model; a model saved with cueq kernels loads with torch ones."""
    from e3pot.model.io import load_model, save_model

    model = tiny("e3")
    cueq = use_kernels(model, "cueq")
    assert cueq.config == model.config
    mine, theirs = model.state_dict(), cueq.state_dict()
    assert list(mine) == list(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)
    loaded = load_model(save_model(cueq, str(tmp_path / "model.pt")))
    assert kernels_of(loaded) == "torch"
    graph = graph_of(ethanol, model)
    assert max_diff(evaluate(loaded, graph), evaluate(cueq, graph)) < TOL


def test_use_kernels_copies_unless_inplace():
    model = tiny("e3")
    params = [id(p) for p in model.parameters()]
    assert use_kernels(model, "torch") is model and use_kernels(model, "auto") is model  # auto: torch on the CPU
    copy = use_kernels(model, "cueq")
    assert copy is not model and kernels_of(model) == "torch" and use_kernels(copy, "cueq") is copy
    back = use_kernels(copy, "torch")
    assert kernels_of(back) == "torch" and kernels_of(copy) == "cueq"
    assert all(type(layer.conv) is EdgeTensorProductScatter for layer in back.layers)

    same = use_kernels(model, "cueq", inplace=True)
    assert same is model and kernels_of(model) == "cueq" and [id(p) for p in model.parameters()] == params
    assert use_kernels(model, "torch", inplace=True) is model and kernels_of(model) == "torch"
    assert [id(p) for p in model.parameters()] == params


def test_training_in_place_with_an_optimiser(periodic):
    """An optimiser made before the switch trains the model that runs with cueq kernels."""
    model = tiny("e3")
    reference = tiny("e3")
    optimisers = [torch.optim.SGD(m.parameters(), lr=1e-3) for m in (model, reference)]
    use_kernels(model, "cueq", inplace=True)
    graph = graph_of(periodic, model)
    for m, opt in zip((model, reference), optimisers):
        m.train()
        pred = evaluate(m, graph, training=True)
        ((pred.forces ** 2).sum() + (pred.energy ** 2).sum()).backward()
        opt.step()
        m.eval()
    worst = max(float((a - b).detach().abs().max()) for a, b in zip(model.parameters(), reference.parameters()))
    assert worst < TOL
    assert max_diff(evaluate(model, graph), evaluate(reference, graph)) < TOL


def test_export_of_a_cueq_model_runs_torch(tmp_path, ethanol):
    """An export writes the torch modules in place of the cueq ones: it runs wherever torch runs."""
    from e3pot.model.export import ExportedModel, export_model

    model = make_model(num_layers=2, num_features=4, l_max=1)
    path = export_model(use_kernels(model, "cueq"), str(tmp_path / "model.ts"))
    with zipfile.ZipFile(path) as zf:
        assert not [n for n in zf.namelist() if "cueq" in n or "cuequivariance" in n]
    graph = graph_of(ethanol, model)
    assert max_diff(ExportedModel(path)(graph, False), evaluate(model, graph)) < TOL


def test_refusals(monkeypatch):
    model = tiny("invariant")
    with pytest.raises(ValueError, match=r"unknown kernels 'bogus'; use one of 'torch', 'cueq', 'auto'"):
        use_kernels(model, "bogus")
    egnn = random_model("egnn")
    assert use_kernels(egnn, "torch") is egnn and use_kernels(egnn, "auto") is egnn and kernels_of(egnn) is None
    with pytest.raises(ValueError, match="kind 'egnn' has no edge tensor-product convolution"):
        use_kernels(egnn, "cueq")
    compiled = CompiledModel(model)
    assert use_kernels(compiled, "auto") is compiled
    with pytest.raises(ValueError, match="needs an eager model.*CompiledModel"):
        use_kernels(compiled, "cueq")
    with pytest.raises(ValueError, match="does not combine with compile"):
        kernels.check_kernels("cueq", compile=True)
    with pytest.raises(ValueError, match="unknown cuEquivariance method"):
        use_kernels(model, "cueq", method="fast")
    monkeypatch.setattr(kernels, "cueq_installed", lambda: False)
    with pytest.raises(ValueError, match=r"not installed: pip install 'e3pot\[cueq\]'"):
        use_kernels(model, "cueq")


# -- calculator and predict ----------------------------------------------------------------------------------

def test_calculator_with_cueq_kernels(periodic):
    model = tiny("e3")
    torch_calc, cueq_calc = E3PotCalculator(model), E3PotCalculator(model, kernels="cueq")
    assert torch_calc.kernels == "torch" and cueq_calc.kernels == "cueq" and kernels_of(model) == "torch"
    for name in ("energy", "forces", "stress"):
        want = np.asarray(torch_calc.get_property(name, periodic))
        assert np.abs(want - np.asarray(cueq_calc.get_property(name, periodic))).max() < TOL


def test_calculator_refuses_bad_kernels():
    model = tiny("invariant")
    with pytest.raises(ValueError, match=r"unknown kernels 'bogus'; use one of 'torch', 'cueq', 'auto'"):
        E3PotCalculator(model, kernels="bogus")
    with pytest.raises(ValueError, match="does not combine with compile"):
        E3PotCalculator(model, kernels="cueq", compile=True)
    with pytest.raises(ValueError, match="kind 'egnn'"):
        E3PotCalculator(random_model("egnn"), kernels="cueq")


def test_compiled_path_runs_the_torch_kernels():
    """A model given with cueq kernels is compiled with the torch ones (the compilation itself waits for the first
    call, which this test does not make)."""
    calc = E3PotCalculator(use_kernels(tiny("invariant"), "cueq"), compile=True)
    assert isinstance(calc.model, CompiledModel) and calc.kernels == "torch" and kernels_of(calc.model.model) == "torch"


def test_predict_with_cueq_kernels(model_file_64, tmp_path, capsys):
    import ase.io

    from e3pot.cli.predict import main
    from e3pot.predict import predict

    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.1, seed=3)
    inputs = str(tmp_path / "in.extxyz")
    ase.io.write(inputs, [atoms, atoms], format="extxyz")
    energies = {}
    for choice in ("torch", "cueq"):
        out = str(tmp_path / f"{choice}.extxyz")
        assert main([model_file_64, inputs, "-o", out, "--kernels", choice, "--no-progress"]) == 0
        energies[choice] = [a.info["e3pot_energy"] for a in ase.io.read(out, ":")]
    assert np.abs(np.subtract(energies["torch"], energies["cueq"])).max() < TOL
    want, got = (predict(model_file_64, [atoms], kernels=choice)[0] for choice in ("torch", "cueq"))
    assert abs(want["energy"] - got["energy"]) < TOL and np.abs(want["forces"] - got["forces"]).max() < TOL

    out = str(tmp_path / "compiled.extxyz")
    assert main([model_file_64, inputs, "-o", out, "--kernels", "cueq", "--compile", "--no-progress"]) == 2
    assert "does not combine with compile" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([model_file_64, inputs, "-o", out, "--kernels", "bogus"])
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


# -- on a GPU -------------------------------------------------------------------------------------------------

@cuda_kernels
@pytest.mark.parametrize("name", list(CONVOLUTIONS))
def test_cuda_convolution_uniform_1d(name):
    conv = convolution(name).cuda()
    if len({mul for mul, _ in conv.irreps_in}) > 1:
        with pytest.raises(ValueError, match="one multiplicity"):
            CueqEdgeConvolution(conv, method="uniform_1d")
        return
    cueq = CueqEdgeConvolution(conv, method="uniform_1d")
    x, sh, w, sender, receiver = random_inputs(conv, n_atoms=200, n_edges=3000, device="cuda")
    assert max_diff([conv(x, sh, w, sender, receiver)], [cueq(x, sh, w, sender, receiver)]) < 1e-12


@cuda_kernels
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_cuda_uniform_1d_equals_torch(kind, dtype, periodic):
    model = tiny(kind).to(device="cuda", dtype=dtype)
    cueq = use_kernels(model, "cueq", method="uniform_1d")
    assert use_kernels(model, "auto") is not model  # auto picks cueq on a GPU with the kernels
    graph = graph_of(periodic, model).to(device="cuda")
    want = evaluate(model, graph, compute_stress=True)
    got = evaluate(cueq, graph, compute_stress=True)
    if dtype == torch.float64:
        assert max_diff(want, got) < TOL, max_diff(want, got)
    else:
        for a, b in zip(want, got):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@cuda
def test_cuda_training_step(periodic):
    """One optimiser step on the GPU with cueq kernels (the CUDA kernel where installed) equals one with torch."""
    models = [tiny("e3").cuda(), tiny("e3").cuda()]
    use_kernels(models[1], "cueq", inplace=True)
    graph = graph_of(periodic, models[0]).to(device="cuda")
    losses = []
    for m in models:
        opt = torch.optim.SGD(m.parameters(), lr=1e-3)
        m.train()
        pred = evaluate(m, graph, compute_stress=True, training=True)
        loss = (pred.energy ** 2).sum() + (pred.forces ** 2).sum() + (pred.stress ** 2).sum()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert abs(losses[0] - losses[1]) <= TOL * abs(losses[0])
    worst = max(float((a - b).detach().abs().max()) for a, b in zip(*(m.parameters() for m in models)))
    assert worst < TOL


@cuda
def test_cuda_chunked_path(periodic):
    model = tiny("e3").cuda()
    cueq = use_kernels(model, "cueq")
    graph = graph_of(periodic, model).to(device="cuda")
    assert max_diff(evaluate(model, graph, compute_stress=True), chunked_evaluate(cueq, graph, True, 13)) < TOL
