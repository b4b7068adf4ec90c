"""AOTInductor packages: an export compiled once, ahead of time, that loads without compiling.

The compiled path (:mod:`e3pot.model.compiled`) compiles energy, forces and stress with Inductor at
the first call of every process, which costs a minute or two. ``e3pot export MODEL -o model.pt2
--format aoti`` does the same compilation once, at export time, with AOTInductor, and writes the
compiled code, weights included, into one ``.pt2`` package. Loading it unpacks a shared library and
opens it; nothing is compiled, and neither e3pot nor Python is needed to run it (libtorch's
``torch::inductor::AOTIModelPackageLoader`` loads it in C++).

The package holds two models, each a flat graph of ATen operations (forward and autograd's backward,
traced with ``make_fx`` as the compiled path does) with the numbers of atoms and edges as symbols:

``"forces"``: one structure, inputs ``(positions, species, edge_index, edge_shift, batch, cell, pbc)`` as
    :class:`~e3pot.data.graph.AtomicGraph` (positions, edge shifts and cell float64; ``batch`` all zeros;
    ``cell`` (1, 3, 3), ``pbc`` (1, 3)); outputs ``(energy (1,), forces (n, 3), stress (1, 3, 3),
    atomic_energies (n,))``, float64. The stress is always computed (NaN without a cell volume, as
    :class:`~e3pot.model.forces.Conservative` gives it).
``"local_energy"``: the engines' call, :class:`e3pot.model.engine.LocalEnergy`: inputs ``(positions float64
    (n_all, 3), species long (n_all,), edge_index long (2, n_edges), local float64 (n_all,))``, followed by
    ``edge_shift float64 (n_edges, 3)`` where :class:`~e3pot.model.engine.LocalEnergy` takes edge shifts
    (a compiled graph has no optional inputs: pass zeros for none); outputs ``(energy (1,), forces (n_all, 3),
    atomic_energies (n_all,), virial (6,), atom_virial (n_all, 6))``, float64. The metadata lists the
    inputs of both models (``models``).

The metadata of every export (:func:`e3pot.model.export.export_metadata`: species, cutoff, dtype, units,
ghost cutoff, ...) is stored as a JSON string under the key ``"e3pot"`` of each model's AOTInductor
metadata. In C++::

    torch::inductor::AOTIModelPackageLoader loader(path, "local_energy");
    std::string json = loader.get_metadata().at("e3pot");
    std::vector<at::Tensor> out = loader.run({positions, species, edge_index, local, edge_shift});

(``AOTIModelPackageLoader::load_metadata_from_package(path, "local_energy")`` reads the same map without
loading the model.) In Python, :class:`AotiModel` reads it as ``metadata``.

A package runs on the device kind it was compiled for (``--device``), in the dtype of the model it was
made from, and with the torch version that compiled it (AOTInductor's compiled code is tied to the
libtorch it was built against; export again after upgrading torch). It is never evaluated in chunks:
its memory grows with the structure as the direct path's does.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import warnings
import zipfile
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from e3pot.data.graph import AtomicGraph
from e3pot.model.base import Runtime

FORMAT = "e3pot-aoti"
METADATA_KEY = "e3pot"  # the key of the export's metadata (a JSON string) in each model's AOTInductor metadata
FORCES, LOCAL_ENERGY = "forces", "local_energy"
MODELS = (FORCES, LOCAL_ENERGY)
FORCES_INPUTS = ["positions", "species", "edge_index", "edge_shift", "batch", "cell", "pbc"]
FORCES_OUTPUTS = ["energy", "forces", "stress", "atomic_energies"]
ENGINE_OUTPUTS = ["energy", "forces", "atomic_energies", "virial", "atom_virial"]
# the size of each input along its dynamic dimension: {dimension: "n_atoms" or "n_edges"}
_DYNAMIC = {"positions": {0: "n_atoms"}, "species": {0: "n_atoms"}, "edge_index": {1: "n_edges"},
            "edge_shift": {0: "n_edges"}, "batch": {0: "n_atoms"}, "local": {0: "n_atoms"}}


def engine_inputs() -> List[str]:
    """The inputs of the ``"local_energy"`` model: those of :meth:`e3pot.model.engine.LocalEnergy.forward`, in
    its order (an optional one included: the compiled graph takes it always)."""
    import inspect

    from e3pot.model.engine import LocalEnergy

    return [name for name in inspect.signature(LocalEnergy.forward).parameters if name != "self"]


def signatures() -> Dict[str, Dict[str, List[str]]]:
    """The inputs and outputs of the package's models, by name, as the metadata lists them."""
    return {FORCES: {"inputs": FORCES_INPUTS, "outputs": FORCES_OUTPUTS},
            LOCAL_ENERGY: {"inputs": engine_inputs(), "outputs": ENGINE_OUTPUTS}}


def _dynamic_shapes(names: Sequence[str], dims: Dict[str, Any]):
    return tuple({axis: dims[size] for axis, size in _DYNAMIC[name].items()} if name in _DYNAMIC else None
                 for name in names)


def _forces_function(model: torch.nn.Module):
    from e3pot.model.forces import Conservative

    conservative = Conservative(model)

    def forces(positions: Tensor, species: Tensor, edge_index: Tensor, edge_shift: Tensor, batch: Tensor,
               cell: Tensor, pbc: Tensor):
        graph = AtomicGraph(positions, species, edge_index, edge_shift, batch, cell, pbc)
        energy, f, stress, atomic = conservative(graph, True, False)
        return energy, f, stress, atomic

    return forces


def _example_inputs(model: torch.nn.Module, device: torch.device) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]:
    """Inputs of both models for tracing: a few atoms of every species, all within the cutoff of each other
    (only their shapes and dtypes matter: they are traced with symbolic sizes)."""
    n = 5
    generator = torch.Generator().manual_seed(0)
    positions = (torch.rand((n, 3), generator=generator, dtype=torch.float64) * (0.5 * model.r_max / 3 ** 0.5))
    species = torch.arange(n) % len(model.atomic_numbers)
    pairs = [(j, i) for i in range(n) for j in range(n) if i != j]  # [sender, receiver], 20 edges
    edge_index = torch.tensor(pairs, dtype=torch.long).T.contiguous()
    edge_shift = torch.zeros((edge_index.shape[1], 3), dtype=torch.float64)
    cell = (4.0 * model.r_max * torch.eye(3, dtype=torch.float64))[None]
    graph = (positions, species, edge_index, edge_shift, torch.zeros(n, dtype=torch.long), cell,
             torch.ones((1, 3), dtype=torch.bool))
    values = {"positions": positions, "species": species, "edge_index": edge_index, "edge_shift": edge_shift,
              "local": (torch.arange(n) < 3).to(torch.float64)}
    engine = tuple(values[name] for name in engine_inputs())
    return (tuple(t.to(device) for t in graph), tuple(t.to(device) for t in engine))


def _trace(function, args: Sequence[Tensor]) -> torch.fx.GraphModule:
    """``function`` (forward and autograd's backward) as a flat ATen graph with symbolic sizes, as the compiled
    path traces it (:meth:`e3pot.model.compiled.CompiledModel._compile`)."""
    from torch.fx.experimental import _config as fx_config
    from torch.fx.experimental.proxy_tensor import make_fx

    from e3pot.model.compiled import _sizes_from_shapes

    with warnings.catch_warnings(), fx_config.patch(use_duck_shape=False):
        warnings.simplefilter("ignore", UserWarning)
        traced = make_fx(function, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*args)
    return _sizes_from_shapes(traced)


def _exported_program(traced: torch.fx.GraphModule, args: Sequence[Tensor], dynamic_shapes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return torch.export.export(traced, tuple(args), dynamic_shapes=dynamic_shapes, strict=False)


def _index_add_as_scatter_add(x: Tensor, dim: int, index: Tensor, source: Tensor, *, alpha=1):
    """``x.index_add(dim, index, source, alpha=alpha)`` as a ``scatter_add``, which Inductor leaves to ATen's
    kernel on the CPU."""
    if source.dim() == 0:
        return NotImplemented
    dim = dim % source.dim()
    if alpha != 1:
        source = source * alpha
    shape = [1] * source.dim()
    shape[dim] = -1
    return x.scatter_add(dim, index.reshape(shape).expand_as(source), source)


@contextlib.contextmanager
def _scatter_sums_by_aten(device: torch.device) -> Iterator[None]:
    """Inductor with the scatter-sums (``index_add``: every scatter-sum, and the derivative of every gather)
    left to ATen's kernels on the CPU, as the compiled path has them (:func:`e3pot.model.compiled._inductor`
    says why). AOTInductor takes no decomposition table, so its choice of table is replaced for the
    compilation; and ``index_add`` is given as ``scatter_add``, since AOTInductor calls an ATen
    ``index_add`` through its proxy executor, which fails on the op's keyword argument ``alpha``
    ("Mismatch between ints consumed and num_ints")."""
    from torch._inductor import compile_fx

    choose = getattr(compile_fx, "select_decomp_table", None)
    if device.type != "cpu" or choose is None:
        yield
        return

    def table():
        out = dict(choose())
        out[torch.ops.aten.index_add.default] = _index_add_as_scatter_add
        return out

    compile_fx.select_decomp_table = table
    try:
        yield
    finally:
        compile_fx.select_decomp_table = choose


@contextlib.contextmanager
def _quiet_inductor() -> Iterator[None]:
    """Inductor's notes on how it lowers single operations (``aten._linalg_det ... missing a c-shim
    implementation, using proxy executor as fallback``: the package still runs it, in C++ too) left off the
    command's output; its errors still show."""
    import logging

    logger = logging.getLogger("torch._inductor.ir")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _aot_compile(program, info: str, device: torch.device) -> List[Any]:
    """The files of one model compiled by AOTInductor, ready to be packaged."""
    args, kwargs = program.example_inputs
    # cpp.dynamic_threads: the kernels use the number of threads of the process that runs them (torch's, or
    # OMP_NUM_THREADS in C++), not that of the machine that compiled them
    options = {"aot_inductor.package": True, "aot_inductor.metadata": {METADATA_KEY: info},
               "cpp.dynamic_threads": True}
    with _scatter_sums_by_aten(device), _quiet_inductor(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        files = torch._inductor.aot_compile(program.module(check_guards=False), args, kwargs, options=options)
    if not isinstance(files, list):
        raise RuntimeError(f"AOTInductor returned {type(files).__name__}, not the list of files of a package")
    return files


def export_aoti(model, path: str, metadata: Optional[Dict[str, Any]] = None) -> str:
    """Compile ``model`` (an eager e3pot model) with AOTInductor and write the package (see the module's
    notes) at ``path``, on the device and in the dtype of the model. Takes a minute or two on a CPU
    (announced on stderr).

    The package is written to a temporary file next to ``path`` and moved over it when complete (an
    existing file is replaced: commands check ``--overwrite`` themselves, see :mod:`e3pot.files`).
    """
    from torch.export import Dim

    from e3pot.files import atomic_output
    from e3pot.model.base import EnergyModel
    from e3pot.model.compiled import announce_compilation
    from e3pot.model.engine import LocalEnergy
    from e3pot.model.export import export_metadata

    if not isinstance(model, EnergyModel):
        raise TypeError(f"an AOTInductor export needs an eager e3pot model (a model file), not {type(model).__name__}")
    model = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    device = next(model.parameters()).device
    info = export_metadata(model, FORMAT, metadata)
    info.update(device=device.type, models=signatures())
    text = json.dumps(info)
    graph, engine = _example_inputs(model, device)
    dims = {"n_atoms": Dim("n_atoms", min=0), "n_edges": Dim("n_edges", min=0)}
    announce_compilation("an AOTInductor package (energy, forces and stress of one structure; the engines' "
                         "local energy)", device)
    forces = _exported_program(_trace(_forces_function(model), graph), graph, _dynamic_shapes(FORCES_INPUTS, dims))
    local = _exported_program(_trace(LocalEnergy(model), engine), engine, _dynamic_shapes(engine_inputs(), dims))
    files = {FORCES: _aot_compile(forces, text, device), LOCAL_ENERGY: _aot_compile(local, text, device)}
    from torch._inductor.package import package_aoti

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            package_aoti(fh, files)
    return path


def _model_names(names: List[str]) -> Dict[str, List[str]]:
    """Entries of a PT2 archive by AOTInductor model (``<archive>/data/aotinductor/<model>/<file>``)."""
    out: Dict[str, List[str]] = {}
    for name in names:
        parts = name.split("/")
        if len(parts) == 5 and parts[1:3] == ["data", "aotinductor"]:
            out.setdefault(parts[3], []).append(name)
    return out


def read_metadata(path: str, model: str = FORCES) -> Optional[Dict[str, Any]]:
    """The export's metadata in a package written by :func:`export_aoti`, read from the archive without
    loading the model; None for any other file."""
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as zf:
            entries = _model_names(zf.namelist())
            if not all(name in entries for name in MODELS):
                return None
            for name in entries[model]:
                if name.endswith(".wrapper_metadata.json"):
                    with zf.open(name) as fh:
                        text = json.load(fh).get(METADATA_KEY)
                    info = json.loads(text) if isinstance(text, str) else None
                    return info if isinstance(info, dict) and info.get("format") == FORMAT else None
    except (OSError, zipfile.BadZipFile, ValueError, AttributeError):
        return None
    return None


def is_aoti(path: str) -> bool:
    """True for an AOTInductor package written by :func:`export_aoti`."""
    return os.path.isfile(path) and read_metadata(path) is not None


def _device_index(device: torch.device) -> int:
    return -1 if device.type == "cpu" or device.index is None else int(device.index)


class AotiModel(Runtime):
    """A loaded AOTInductor package (:func:`export_aoti`), with the attributes of
    :class:`~e3pot.model.export.ExportedModel` that the calculator and predictor use.

    ``model(graph, compute_stress)`` returns ``(energy, forces, stress or None, atomic_energies)``. A batch
    of several structures runs the ``"forces"`` model once per structure and joins the results (the
    package holds the one-structure call only). Floating-point inputs are passed as float64 (the package's
    input dtype; a float32 model casts after forming the edge vectors, as an eager one does).
    :meth:`local_energy` is the engines' call (the ``"local_energy"`` model, loaded at its first use).
    """

    energy_model = None  # never evaluated in chunks

    def one_piece_reason(self) -> str:
        return (f"an AOTInductor package ({self.path}) holds one compiled call and cannot be evaluated in chunks, "
                "whatever the model kind (the model file or a TorchScript export can be)")

    def __init__(self, path: str, device: str | torch.device = "cpu"):
        info = read_metadata(path)
        if info is None:
            raise ValueError(f"{path} is not an AOTInductor package made by e3pot export --format aoti")
        self.path = path
        self.device = torch.device(device)
        built_for = str(info.get("device", "cpu"))
        if self.device.type != built_for:
            raise ValueError(f"{path} was compiled for {built_for}, not {self.device.type}; export the model again "
                             f"with --format aoti --device {self.device.type}")
        self.metadata = info
        self.atomic_numbers = [int(z) for z in info["atomic_numbers"]]
        self.r_max = float(info["r_max"])
        self.dtype = getattr(torch, info["dtype"])
        self.kind = str((info.get("config") or {}).get("kind", "e3"))
        self._loaders: Dict[str, Any] = {}
        self._loader(FORCES)

    def _loader(self, name: str):
        loader = self._loaders.get(name)
        if loader is None:
            loader = self._loaders[name] = torch._C._aoti.AOTIModelPackageLoader(
                self.path, name, False, 1, _device_index(self.device))
        return loader

    def package_metadata(self, name: str = FORCES) -> Dict[str, str]:
        """The AOTInductor metadata of one model of the package, as C++'s ``get_metadata()`` returns it."""
        return dict(self._loader(name).get_metadata())

    def chunk_sizes(self) -> Optional[List[Tuple[int, int]]]:
        return None

    def _one(self, graph: AtomicGraph) -> List[Tensor]:
        inputs = [t.to(device=self.device, dtype=torch.float64) if t.is_floating_point() else t.to(self.device)
                  for t in graph]
        return self._loader(FORCES).run(inputs)

    def __call__(self, graph: AtomicGraph, compute_stress: bool = False):
        n_graphs = graph.cell.shape[0]
        if n_graphs == 1:
            energy, forces, stress, atomic = self._one(graph)
        else:
            energy, forces, stress, atomic = self._batch(graph)
        return energy, forces, (stress if compute_stress else None), atomic

    def _batch(self, graph: AtomicGraph) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        n_atoms = graph.positions.shape[0]
        receiver_graph = graph.batch[graph.edge_index[1]]
        forces = graph.positions.new_zeros((n_atoms, 3), dtype=torch.float64)
        atomic = graph.positions.new_zeros((n_atoms,), dtype=torch.float64)
        energies, stresses = [], []
        for k in range(graph.cell.shape[0]):
            atoms = torch.nonzero(graph.batch == k).flatten()
            edges = torch.nonzero(receiver_graph == k).flatten()
            renumber = torch.full((n_atoms,), -1, dtype=torch.long, device=graph.batch.device)
            renumber[atoms] = torch.arange(atoms.shape[0], device=atoms.device)
            one = AtomicGraph(graph.positions[atoms], graph.species[atoms], renumber[graph.edge_index[:, edges]],
                              graph.edge_shift[edges], torch.zeros_like(atoms), graph.cell[k:k + 1], graph.pbc[k:k + 1])
            e, f, s, a = self._one(one)
            forces[atoms.to(f.device)] = f
            atomic[atoms.to(a.device)] = a
            energies.append(e)
            stresses.append(s)
        return torch.cat(energies), forces.to(self.device), torch.cat(stresses), atomic.to(self.device)

    def local_energy(self, positions: Tensor, species: Tensor, edge_index: Tensor, local: Tensor,
                     edge_shift: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The engines' call (see :class:`e3pot.model.engine.LocalEnergy`), run by the ``"local_energy"`` model;
        ``edge_shift`` (n_edges, 3) Å, optional, where the package takes it (see the module's notes)."""
        names = list(((self.metadata.get("models") or {}).get(LOCAL_ENERGY) or {}).get("inputs") or
                     ["positions", "species", "edge_index", "local"])
        if edge_shift is None:
            edge_shift = torch.zeros((edge_index.shape[1], 3), dtype=torch.float64)
        elif "edge_shift" not in names:
            raise ValueError(f"{self.path}: this package's local_energy takes no edge shifts (its inputs: "
                             f"{', '.join(names)}); export the model again with this version of e3pot")
        given = {"positions": positions, "species": species, "edge_index": edge_index, "local": local,
                 "edge_shift": edge_shift}
        inputs = [given[name].to(self.device, torch.float64) if given[name].is_floating_point()
                  else given[name].to(self.device) for name in names]
        return tuple(self._loader(LOCAL_ENERGY).run(inputs))
