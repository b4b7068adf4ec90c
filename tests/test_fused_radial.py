"""All layers' radial networks evaluated at once (E3Potential.radial_weights): the same numbers as the
networks one by one, for every depth, both kinds that have them, training gradients and TorchScript."""
import pytest
import torch
from ase.build import bulk, molecule

from e3pot.data.graph import collate
from e3pot.data.neighbors import SpeciesMap, atoms_to_graph
from e3pot.model import forces as F
from e3pot.model.export import ExportedModel, export_model
from e3pot.nn.interaction import radial_scales
from e3pot.testing import random_model


def _graph(model):
    ethanol = molecule("CH3CH2OH")
    ethanol.rattle(0.05, seed=0)
    si = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    si.rattle(0.05, seed=1)
    species = SpeciesMap(model.atomic_numbers)
    return collate([atoms_to_graph(a, species, model.r_max, source=f"s{k}") for k, a in enumerate((ethanol, si))])


def _both(model, graph, **kwargs):
    """(fused, one by one) predictions of ``model`` on ``graph``."""
    assert model.fuse_radial
    fused = F.evaluate(model, graph, compute_stress=True, **kwargs)
    model.fuse_radial = False
    try:
        plain = F.evaluate(model, graph, compute_stress=True, **kwargs)
    finally:
        model.fuse_radial = True
    return fused, plain


def _max_rel(a, b):
    return float((a - b).detach().abs().max() / b.detach().abs().max())


@pytest.mark.parametrize("kind", ["e3", "cartesian"])
@pytest.mark.parametrize("radial_layers", [0, 1, 2, 3])
def test_fused_radial_networks_equal_the_networks_one_by_one(kind, radial_layers):
    model = random_model(kind, radial_layers=radial_layers, num_layers=3)
    graph = _graph(model)
    fused, plain = _both(model, graph)
    assert _max_rel(fused.energy, plain.energy) < 1e-10
    assert _max_rel(fused.forces, plain.forces) < 1e-10
    assert _max_rel(fused.stress[1], plain.stress[1]) < 1e-10  # (the molecule has no stress)
    # each layer's weights, directly
    _, radial = model.edge_features(graph.positions, graph.edge_index[0], graph.edge_index[1], graph.edge_shift)
    for layer, w in zip(model.layers, model.radial_weights(radial)):
        assert w.shape == (radial.shape[0], layer.conv.weight_numel)
        assert _max_rel(w, layer.radial(radial)) < 1e-12


def test_the_folded_constants_matter():
    """The check above can fail: without e3nn's normalisation constants the weights differ."""
    model = random_model("e3", radial_layers=2)
    layer = model.layers[0]
    assert len(set(round(s, 12) for s in radial_scales(layer.radial))) > 1
    saved = list(layer.radial_scales)
    layer.radial_scales = [1.0] * len(saved)
    graph = _graph(model)
    fused, plain = _both(model, graph)
    assert _max_rel(fused.forces, plain.forces) > 1e-3


def test_fused_radial_training_gradients_equal():
    """The loss's parameter gradients (through the force double backward) are the same either way."""
    model = random_model("e3", radial_layers=2).train()
    graph = _graph(model)

    def grads():
        pred = F.evaluate(model, graph, training=True)
        loss = pred.energy.pow(2).sum() + pred.forces.pow(2).sum()
        return torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)

    fused = grads()
    model.fuse_radial = False
    plain = grads()
    for (name, _), a, b in zip(model.named_parameters(), fused, plain):
        if a is None or b is None:
            assert a is None and b is None, name
            continue
        assert float((a - b).abs().max()) <= 1e-10 * max(float(b.abs().max()), 1.0), name


def test_fused_radial_survives_torchscript(tmp_path):
    model = random_model("e3")
    path = str(tmp_path / "model.pth")
    export_model(model, path)
    exported = ExportedModel(path)
    graph = _graph(model)
    a, (energy, forces) = F.evaluate(model, graph), exported(graph)[:2]
    assert _max_rel(energy, a.energy) < 1e-12 and _max_rel(forces, a.forces) < 1e-10
    assert "radial_weights" in exported.energy_model.features.code  # the archive runs the fused path
