"""One dispatcher decides how a model runs: direct, chunked, compiled or exported, for every caller; forces.py
knows only energy -> forces."""
import ast
import json
import warnings

import pytest
import torch
from conftest import SPECIES, graph_of
from test_large_systems import assert_same, water_box

import e3pot
from e3pot.model import forces, kinds
from e3pot.model.chunked import GIB, MemoryBudgetError, chunkable, chunked_evaluate, footprint
from e3pot.model.compiled import CompiledModel
from e3pot.model.export import METADATA_FILE, ExportedModel, export_model
from e3pot.model.runtime import Path, choose_path, evaluate, run_model


def tiny(kind, seed=0):
    torch.manual_seed(seed)
    model = kinds.build_model(dict(kind=kind, atomic_numbers=SPECIES, r_max=3.0, num_features=6, num_layers=2,
                                   num_basis=6, radial_hidden=16, avg_num_neighbors=4.0,
                                   energy_shift=[-13.0, -1030.0, -2040.0, -100.0], energy_scale=1.3))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.double().eval()


@pytest.fixture(scope="module")
def box():
    atoms = water_box(3, seed=0)  # 81 atoms: more than the smallest chunk
    atoms.rattle(0.05, seed=1)
    return atoms


def chunking_budget(model, graph) -> float:
    """A budget (GiB) below the one-piece estimate and above the chunked one: it forces chunks."""
    fp = footprint(model, 8)
    n_atoms, n_edges = graph.positions.shape[0], graph.edge_index.shape[1]
    kept, direct = fp.kept(n_atoms, n_edges), fp.direct(n_atoms, n_edges)
    return (kept + 0.5 * (direct - kept)) / GIB


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory):
    """{kind: {"eager", "compiled", "exported"}} (nothing is compiled unless a compiled model is called)."""
    out = {}
    for kind in kinds.KINDS:
        model = tiny(kind)
        path = export_model(model, str(tmp_path_factory.mktemp("export") / f"{kind}.ts"))
        out[kind] = {"eager": model, "compiled": CompiledModel(model), "exported": ExportedModel(path)}
    return out


# forces.py -------------------------------------------------------------------------------------------------

def test_forces_imports_nothing_else_of_the_model_package():
    tree = ast.parse(open(forces.__file__).read())
    imported = set()
    for node in ast.walk(tree):  # function bodies included: no lazy imports either
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in forces.py"
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    ours = {name for name in imported if name.split(".")[0] == "e3pot"}
    assert not {name for name in ours if name.startswith("e3pot.model")}, ours
    assert {name.rsplit(".", 1)[0] for name in ours} <= {"e3pot", "e3pot.data.graph", "e3pot.nn.scatter",
                                                         "e3pot.data", "e3pot.nn"}, ours


def test_forces_evaluate_is_the_direct_path_and_says_so_for_a_budget(runtimes, box):
    model = runtimes["e3"]["eager"]
    graph = graph_of(box, model)
    assert_same(forces.Conservative(model)(graph, True), forces.evaluate(model, graph, compute_stress=True), rtol=0)
    with pytest.raises(ValueError, match="takes no memory budget.*e3pot.evaluate"):
        forces.evaluate(model, graph, memory_budget=1.0)
    assert e3pot.evaluate is evaluate


# the choice ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("runtime", ["eager", "compiled", "exported"])
@pytest.mark.parametrize("kind", list(kinds.KINDS))
def test_the_dispatcher_picks_the_path(runtimes, box, kind, runtime):
    model = runtimes[kind][runtime]
    graph = graph_of(box, runtimes[kind]["eager"])
    own = {"eager": "direct", "compiled": "compiled", "exported": "exported"}[runtime]
    assert choose_path(model, graph, True) == Path(own)  # small: the model's own path
    if chunkable(model):
        budget = chunking_budget(model, graph)
        path = choose_path(model, graph, True, memory_budget=budget)
        assert path.how == "chunked" and 0 < path.chunk_edges < graph.edge_index.shape[1]
        assert choose_path(model, graph, True, memory_budget=100.0) == Path(own)
    else:  # never chunked, whatever the budget
        assert kind == "egnn"
        assert choose_path(model, graph, True, memory_budget=1e-6) == Path(own)
    if runtime == "eager":
        assert choose_path(model, graph, True, memory_budget=1e-6, training=True) == Path("direct")
    else:
        with pytest.raises(ValueError, match="training needs an eager model"):
            choose_path(model, graph, True, training=True)


def test_each_runtime_names_its_energy_model(runtimes):
    for kind, of_kind in runtimes.items():
        eager, compiled, exported = of_kind["eager"], of_kind["compiled"], of_kind["exported"]
        assert compiled.energy_model is compiled.model and compiled.energy_model is not eager  # a frozen copy
        assert compiled.kind == exported.kind == eager.kind == kind
        if kind == "egnn":
            assert exported.energy_model is None and exported.chunk_sizes() is None
            assert eager.chunk_sizes() is None and compiled.chunk_sizes() is None
        else:
            assert isinstance(exported.energy_model, torch.jit.ScriptModule)
            assert exported.chunk_sizes() == compiled.chunk_sizes() == eager.chunk_sizes()
            assert footprint(exported, 8) == footprint(compiled, 8) == footprint(eager, 8)


def test_the_layers_report_their_edge_sizes(runtimes):
    model = runtimes["e3"]["eager"]
    for (edge_floats, in_dim), layer in zip(model.chunk_sizes(), model.layers):
        assert edge_floats == layer.conv.edge_floats() + layer.radial_edge_floats > layer.conv.weight_numel
        assert in_dim == layer.irreps_in.dim


# chunked == direct -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("runtime", ["eager", "compiled", "exported"])
@pytest.mark.parametrize("kind", [k for k in kinds.KINDS if k != "egnn"])
def test_chunked_equals_direct_for_every_kind_that_can_be_chunked(runtimes, box, kind, runtime):
    eager = runtimes[kind]["eager"]
    model = runtimes[kind][runtime]  # a compiled model is not called here: its chunks run its eager model
    graph = graph_of(box, eager)
    direct = forces.evaluate(eager, graph, compute_stress=True)
    budget = chunking_budget(model, graph)
    assert_same(direct, evaluate(model, graph, compute_stress=True, memory_budget=budget))
    assert_same(direct, run_model(model, graph, True, memory_budget=budget))
    assert_same(direct, chunked_evaluate(model, graph, True, 13))


def test_every_kind_but_egnn_can_be_chunked(runtimes):
    assert {kind for kind, of_kind in runtimes.items() if chunkable(of_kind["eager"])} == set(kinds.KINDS) - {"egnn"}


def test_an_egnn_runs_in_one_piece_and_says_so(runtimes, box):
    model = runtimes["egnn"]["eager"]
    graph = graph_of(box, model)
    with pytest.raises(ValueError, match="kind 'egnn' cannot be evaluated in chunks"):
        chunked_evaluate(model, graph, True, 13)
    with pytest.warns(UserWarning, match="kind 'egnn' cannot be evaluated in chunks"):
        out = run_model(runtimes["egnn"]["exported"], graph, True, memory_budget=1e-6)
    assert_same(forces.evaluate(model, graph, compute_stress=True), out)


def test_an_export_without_sizes_runs_in_one_piece(runtimes, box, tmp_path):
    """An archive whose metadata lacks the sizes of the memory estimate (as written by earlier versions)."""
    source = export_model(runtimes["e3"]["eager"], str(tmp_path / "new.ts"))
    extra = {METADATA_FILE: ""}
    module = torch.jit.load(source, _extra_files=extra)
    info = json.loads(extra[METADATA_FILE])
    del info["chunk_sizes"]
    torch.jit.save(module, str(tmp_path / "old.ts"), _extra_files={METADATA_FILE: json.dumps(info)})
    old = ExportedModel(str(tmp_path / "old.ts"))
    graph = graph_of(box, runtimes["e3"]["eager"])
    assert old.energy_model is None and not chunkable(old)
    assert choose_path(old, graph, True, memory_budget=1e-6) == Path("exported")
    with pytest.warns(UserWarning, match=r"written by an earlier e3pot without the sizes.*export it again"):
        out = run_model(old, graph, True, memory_budget=1e-6)
    assert_same(forces.evaluate(runtimes["e3"]["eager"], graph, compute_stress=True), out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_model(old, graph, True)  # no budget given: nothing to say


def test_a_compiled_model_out_of_memory_is_told_about_chunks(runtimes, box, monkeypatch):
    """The allocator failing in a compiled call: the message gives the estimates of its eager model's chunks."""
    compiled = runtimes["e3"]["compiled"]
    graph = graph_of(box, runtimes["e3"]["eager"])

    def out_of_memory(self, graph, compute_stress=False):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(CompiledModel, "__call__", out_of_memory)
    assert choose_path(compiled, graph, True, memory_budget=100.0) == Path("compiled")
    with pytest.raises(MemoryBudgetError) as info:
        run_model(compiled, graph, True, memory_budget=100.0)
    message = str(info.value)
    assert "in one piece it needs about" in message and "in chunks at least" in message, message
    assert "lower the budget" in message and "cannot be evaluated in chunks" not in message, message
