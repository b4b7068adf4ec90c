"""e3pot models in OpenMM through openmm-ml: ``MLPotential("e3pot", model="model.pt")`` (docs/openmm.md).

::

    from openmmml import MLPotential

    potential = MLPotential("e3pot", model="model.pt")
    system = potential.createSystem(topology)                          # every atom with the model
    mixed = potential.createMixedSystem(topology, mm_system, ml_atoms)  # ML/MM, mechanical embedding

The package registers the name ``e3pot`` in openmm-ml's ``openmmml.potentials`` entry points; install
the extra ``e3pot[openmm]`` to get OpenMM and openmm-ml. The model runs in Python, called by an
``openmm.PythonForce`` at each step, on the device the model was loaded on (``device``), whatever
OpenMM platform integrates the equations of motion.

At the boundary, and only there: OpenMM's positions and box vectors (nm) become Å (x 10), the model's
energy (eV) becomes kJ/mol (x :data:`EV_TO_KJ_PER_MOL`) and its forces (eV/Å) kJ/mol/nm
(x 10 :data:`EV_TO_KJ_PER_MOL`). A Topology with periodic box vectors gives a periodic model input
(OpenMM's box vectors as the cell, periodic along all three); the ML atoms of a mixed system are the
model's whole input, and their forces go to those atoms only.

A System read back by OpenMM (``XmlSerializer.deserialize``, ``copy.deepcopy``) loads the model again from its
path; when it cannot, the force reports why (:class:`ModelReloadWarning`) and raises it when evaluated, rather than
letting OpenMM crash (see :meth:`OpenMMEvaluator.__setstate__`).

openmm and openmm-ml are imported only when a System is built, so that this module imports without
them. openmm-ml is not imported at all: it calls the factory and the potential by their methods
(it imports this module itself while it loads its entry points, so an import of it here would be
circular).
"""
from __future__ import annotations

import inspect
import os
import pickle
import sys
import warnings
from typing import Any, Dict, Iterable, List, Optional

import numpy as np

EV_TO_KJ_PER_MOL = 96.48533212331002  # e x N_A / 1000, exact since the 2019 SI (OpenMM's value)
NM_TO_ANGSTROM = 10.0

# Arguments that openmm-ml's own embedding passes on to addForces() along with the potential's options;
# they concern the embedding, not the model. (mlLongRange never comes here: openmm-ml refuses it for a
# potential that says whether it is long-ranged, see getMLLongRange.)
EMBEDDING_ARGUMENTS = ("linkAtomDistances",)


# Options of E3PotCalculator that watch a committee's uncertainty during an ASE MD run (record, save, stop). The
# OpenMM force evaluates the mean prediction only, so these would be accepted and have no effect: they are refused.
UNSUPPORTED_OPTIONS = ("uncertainty_threshold", "stop_when_uncertain", "flagged_file")
# Options that decide how the model is loaded: a System built with values other than the potential's loads its own
# model (from the potential's path, or a converted copy of its loaded model) instead of sharing the potential's.
LOAD_OPTIONS = {"device": "cpu", "dtype": None, "compile": False}


def calculator_options() -> List[str]:
    """The options of :class:`e3pot.calculator.E3PotCalculator` besides the model (``device``, ``dtype``,
    ``skin``, ...) that ``MLPotential("e3pot", ...)`` and ``createSystem(...)`` accept: all but the uncertainty
    monitoring of an ASE MD run (:data:`UNSUPPORTED_OPTIONS`)."""
    from e3pot.calculator import E3PotCalculator

    params = inspect.signature(E3PotCalculator.__init__).parameters
    return [name for name, p in params.items()
            if name not in ("self", "model") and name not in UNSUPPORTED_OPTIONS
            and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]


def _check_options(options: Dict[str, Any], where: str) -> None:
    """Refuses unknown and unsupported option names, and a ``device`` or ``dtype`` of the wrong type, before any
    model is loaded; the calculator checks the values of the other options."""
    unsupported = [name for name in UNSUPPORTED_OPTIONS if name in options]
    if unsupported:
        are = "is an option" if len(unsupported) == 1 else "are options"
        raise TypeError(f"{where}: {', '.join(unsupported)} {are} of the ASE calculator e3pot.E3PotCalculator "
                        "(uncertainty monitoring during MD), which the OpenMM potential e3pot does not support")
    known = calculator_options()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"{where}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for the "
                        f"e3pot potential; the options are model (MLPotential only), {', '.join(known)}")
    import torch

    from e3pot.model.io import dtype_from_name

    device, dtype = options.get("device"), options.get("dtype")
    # torch reads an integer as a GPU index, and dtype goes to torch unchecked when the model is loaded
    if device is not None and not isinstance(device, (str, torch.device)):
        raise TypeError(f"{where}: device must be a string, 'cpu', 'cuda' or 'cuda:N', got {device!r} "
                        f"({type(device).__name__})")
    if dtype is not None:
        if not isinstance(dtype, str):
            raise TypeError(f"{where}: dtype must be 'float32' or 'float64', got {dtype!r} ({type(dtype).__name__})")
        dtype_from_name(dtype)  # ValueError naming the choices


def _absolute(model):
    """``model`` with its path, or the paths of a committee's members, made absolute: a System saved with
    XmlSerializer finds its model files from any working folder."""
    def one(member):
        if isinstance(member, os.PathLike):
            member = os.fspath(member)
        return os.path.abspath(member) if isinstance(member, str) else member

    if isinstance(model, (list, tuple)):
        return [one(member) for member in model]
    return one(model)


def _check_model(model, name: str) -> None:
    import torch

    from e3pot.model.base import Runtime
    from e3pot.model.ensemble import Committee

    def ok(member) -> bool:
        return isinstance(member, (str, os.PathLike, torch.nn.Module, Runtime, Committee))

    if isinstance(model, (list, tuple)):
        bad = [m for m in model if not ok(m)]
    else:
        bad = [] if ok(model) else [model]
    if bad:
        raise TypeError(f"MLPotential({name!r}): model must be the path of a model file (model.pt) or TorchScript "
                        f"export, a loaded model, or a list of them (a committee); got {bad[0]!r} "
                        f"({type(bad[0]).__name__})")


def _describe(model) -> str:
    if isinstance(model, str):
        return model
    if isinstance(model, list) and all(isinstance(m, str) for m in model):
        return ", ".join(model)
    return f"the given {type(model).__name__}"


class E3PotPotentialImplFactory:
    """openmm-ml's factory for the potential ``e3pot`` (entry point ``openmmml.potentials``):
    ``MLPotential("e3pot", model=..., **options)`` calls :meth:`createImpl`."""

    def createImpl(self, name: str, **args) -> "E3PotPotentialImpl":
        return E3PotPotentialImpl(name, **args)


class E3PotPotentialImpl:
    """The ``e3pot`` potential of openmm-ml.

    Args:
        name: the name given to ``MLPotential`` (``"e3pot"``).
        model: path of a model file (``model.pt``) or of a TorchScript export, or a loaded model, or a list
            of them (a committee, whose mean is the prediction); a path is loaded here, once, and its errors (no
            such file, not a model) are raised by ``MLPotential(...)``.
        options: :class:`e3pot.calculator.E3PotCalculator`'s options: ``device`` ("cpu", "cuda",
            "cuda:N"), ``dtype`` ("float32", "float64"; default: the model's), ``skin`` (Å; a neighbour
            list reused between steps), ``memory_budget`` (GiB), ``compile``, ``threads`` (for the whole
            process), ``kernels``, ``radial``. ``createSystem`` and ``createMixedSystem`` accept the same
            options, for that System only. The calculator's uncertainty monitoring (``uncertainty_threshold``,
            ``stop_when_uncertain``, ``flagged_file``) is refused: the force gives the mean prediction only.

    ``createSystem(topology)`` and ``createMixedSystem(topology, mm_system, ml_atoms)`` call
    :meth:`addForces`, which adds one ``openmm.PythonForce`` named ``e3pot`` to the System. The model
    is local (its energy depends on neighbours within its cutoff only): :meth:`getMLLongRange` says so
    to openmm-ml's mechanical embedding, which then keeps the force field's long-range electrostatics
    between the ML atoms' periodic images.
    """

    def __init__(self, name: str, model=None, **options):
        from e3pot.calculator import E3PotCalculator
        from e3pot.model.runtime import load_any

        if model is None:
            raise ValueError(f"MLPotential({name!r}) needs a model: MLPotential({name!r}, model='model.pt') "
                             "(a model file or a TorchScript export)")
        _check_options(options, f"MLPotential({name!r})")
        _check_model(model, name)
        model = _absolute(model)
        self.name = name
        self.model = model  # as given (paths made absolute): what a pickled force reloads
        self.options = dict(options)
        # loaded once, shared by the forces of every System made from this potential
        self.loaded = load_any(model, device=options.get("device", "cpu"), dtype=options.get("dtype"),
                               compile=bool(options.get("compile", False)))
        self.atomic_numbers = [int(z) for z in self.loaded.atomic_numbers]
        E3PotCalculator(self.loaded, **options)  # the other options are checked here too, not at the first System

    def addForces(self, topology, system, atoms: Optional[Iterable[int]], forceGroup: int, **args) -> None:
        """Add the model's force for ``atoms`` (all atoms of ``topology`` if None) to ``system``."""
        import openmm

        options = {k: v for k, v in args.items() if k not in EMBEDDING_ARGUMENTS}
        _check_options(options, "createSystem/createMixedSystem")
        options = {**self.options, **options}
        all_atoms = list(topology.atoms())
        indices = list(range(len(all_atoms))) if atoms is None else [int(k) for k in atoms]
        numbers = self.numbers_of([all_atoms[k] for k in indices], indices)
        periodic = topology.getPeriodicBoxVectors() is not None
        source = "OpenMM state" if atoms is None else "OpenMM state (ML atoms, counted from 0 in the order given)"
        # OpenMM 8.6 and later give the force's State the ML atoms only (setParticles); before, the State
        # holds every atom and the evaluator picks the ML atoms and spreads their forces
        own_subset = atoms is not None and hasattr(openmm.PythonForce, "setParticles")
        subset = None if atoms is None or own_subset else indices
        same_load = all(options.get(k, default) == self.options.get(k, default) for k, default in LOAD_OPTIONS.items())
        evaluator = OpenMMEvaluator(self.model, numbers, periodic, options, source=source, subset=subset,
                                    loaded=self.loaded if same_load else None)
        force = openmm.PythonForce(evaluator)
        force.setName("e3pot")
        force.setForceGroup(forceGroup)
        force.setUsesPeriodicBoundaryConditions(periodic)
        if own_subset:
            force.setParticles(indices)
        system.addForce(force)

    def numbers_of(self, atoms: List, indices: List[int]) -> np.ndarray:
        """Atomic numbers of OpenMM ``atoms`` (Topology indices ``indices``); ValueError naming the atoms
        without an element and the elements that the model does not know."""
        from ase.data import chemical_symbols

        missing = [k for k, atom in zip(indices, atoms) if atom.element is None]
        if missing:
            raise ValueError(f"e3pot: atom{'s' if len(missing) > 1 else ''} {_list(missing)} of the Topology "
                             "(indices from 0) have no element (virtual sites, extra particles?); the model "
                             "needs an element for every atom it is given")
        numbers = np.array([atom.element.atomic_number for atom in atoms], dtype=np.int64)
        unknown = sorted(set(numbers.tolist()) - set(self.atomic_numbers))
        if unknown:
            where = [k for k, z in zip(indices, numbers.tolist()) if z in unknown]
            symbols = ", ".join(chemical_symbols[z] for z in unknown)
            known = ", ".join(chemical_symbols[z] for z in self.atomic_numbers)
            plural = "s" if len(unknown) > 1 else ""
            raise ValueError(f"e3pot: the model {_describe(self.model)} does not know element{plural} {symbols} "
                             f"(atom{'s' if len(where) > 1 else ''} {_list(where)} of the Topology, indices from 0); "
                             f"it was trained on {known}. Leave those atoms to the force field (createMixedSystem "
                             "with ml_atoms without them) or use a model trained on them")
        return numbers

    def getSupportedEmbeddings(self) -> List[str]:
        return []  # openmm-ml's own embeddings (mechanical)

    def getMLLongRange(self) -> bool:
        return False  # local: a cutoff of r_max, no long-range electrostatics

    def createMixedSystem(self, *args, **kwargs):
        raise NotImplementedError("e3pot has no embedding of its own; use openmm-ml's (embedding='mechanical')")


class _MissingModelFiles(Exception):
    """Raised (and caught) by OpenMMEvaluator.__setstate__: its message is the whole reason."""


def _paths_only(model) -> bool:
    """Whether ``model`` is a path or a list of paths (pickled as such, loaded again when read)."""
    if isinstance(model, (list, tuple)):
        return all(isinstance(m, str) for m in model)
    return isinstance(model, str)


def _missing_files(model) -> Optional[str]:
    """Which model files of ``model`` (a path or a list of them) do not exist, as a message; None if all do."""
    if not _paths_only(model):
        return None
    paths = [model] if isinstance(model, str) else list(model)
    missing = [p for p in paths if not os.path.exists(p)]
    if not missing:
        return None
    where = "" if all(os.path.isabs(p) for p in missing) else f" (relative to the working folder {os.getcwd()})"
    files = "model file" if len(missing) == 1 else "model files"
    does = "does" if len(missing) == 1 else "do"
    return f"{files} {', '.join(missing)} {does} not exist{where}"


def _list(indices: List[int], shown: int = 8) -> str:
    text = ", ".join(str(k) for k in indices[:shown])
    return text + (f" and {len(indices) - shown} more" if len(indices) > shown else "")


class ModelReloadWarning(RuntimeWarning):
    """A force of a System read back by OpenMM (``XmlSerializer.deserialize``, ``copy.deepcopy``) could not load its
    model; the force raises the same message when it is evaluated."""


class OpenMMEvaluator:
    """The function of the ``PythonForce``: an OpenMM ``State`` (positions of the ML atoms, nm, and the box)
    to the energy (kJ/mol) and forces (kJ/mol/nm) of the model.

    It is pickled when OpenMM copies or serializes the force (``copy.deepcopy``, ``XmlSerializer``,
    openmm-ml's ``interpolate=True``): the pickle holds the model's path (or the model, as bytes, if it was
    given loaded), the atomic numbers, the periodicity and the options, and the model is loaded again when it
    is read. When that load fails (a model file removed or moved), the force is read all the same: a
    :class:`ModelReloadWarning` says why (on stderr if warnings are errors), and every evaluation of the force
    raises that message."""

    def __init__(self, model, numbers: np.ndarray, periodic: bool, options: Dict[str, Any],
                 source: str = "OpenMM state", subset: Optional[Iterable[int]] = None, loaded=None):
        self.model = model
        self.numbers = np.asarray(numbers, dtype=np.int64)
        self.periodic = bool(periodic)
        self.options = dict(options)
        self.source = source  # names the structure in error messages
        # indices of the model's atoms among those of the State, when it holds more (OpenMM before 8.6)
        self.subset = None if subset is None else np.asarray(subset, dtype=np.int64)
        self.error: Optional[str] = None  # why the model could not be loaded again (see __setstate__)
        self._unread: Optional[Dict[str, Any]] = None  # the pickled state of such a force, pickled again as it is
        self._setup(loaded)

    def _setup(self, loaded) -> None:
        from e3pot.calculator import E3PotCalculator

        # the calculator checks the options, applies them (threads, allocator) and holds the loaded model,
        # the species map and the neighbour list with a skin; the evaluation below is its own, without
        # the stress that it computes for every periodic structure
        self.calculator = E3PotCalculator(self.model if loaded is None else loaded, **self.options)
        self.calculator.species(self.numbers, self.source)  # unknown elements raise here
        self.cell = np.zeros((3, 3))
        self.pbc = np.full(3, self.periodic)

    def __getstate__(self):
        if self._unread is not None:
            return self._unread
        state = {"numbers": self.numbers.tolist(), "periodic": self.periodic, "options": self.options,
                 "source": self.source, "subset": None if self.subset is None else self.subset.tolist()}
        if _paths_only(self.model):
            state["model"] = self.model
        else:
            # a loaded model goes in as bytes, so that unpickling it happens in __setstate__, where its errors
            # are caught, and not in pickle's reading of the state, where nothing can catch them
            state["model_pickle"] = pickle.dumps(self.model)
        return state

    def __setstate__(self, state):
        # OpenMM's PythonForce reads this object back with pickle.loads inside its C++ deserializer
        # (PythonForceProxy::deserialize, run by XmlSerializer.deserialize and by copy.deepcopy of a force or a
        # System, which goes through XmlSerializer.clone) and hands the result on without checking it: an
        # exception raised here ends the process with a segmentation fault. So nothing may leave this method;
        # the error is reported now and raised by each evaluation, where OpenMM turns it into an exception.
        try:
            model = state.get("model")
            missing = _missing_files(model)
            if missing:
                raise _MissingModelFiles(missing)
            if "model_pickle" in state:
                model = pickle.loads(state["model_pickle"])
            self.__init__(model, state["numbers"], state["periodic"], state["options"], state["source"],
                          state["subset"])
        except BaseException as exc:  # KeyboardInterrupt too: it would crash the process just the same
            self._unreadable(state, exc)

    def _unreadable(self, state, exc: BaseException) -> None:
        model = state.get("model") if isinstance(state, dict) else None
        if isinstance(exc, _MissingModelFiles):
            why = str(exc)
        else:
            text = (str(exc).strip().splitlines() or [""])[0]
            what = f"model {_describe(model)}" if model is not None else "its loaded model"
            why = f"{what}: {type(exc).__name__}" + (f": {text}" if text else "")
        self.model = model
        self.source = state.get("source", "OpenMM state") if isinstance(state, dict) else "OpenMM state"
        self.error = (f"e3pot: the OpenMM force of a System read back (XmlSerializer.deserialize or copy.deepcopy) "
                      f"cannot load its model: {why}; the force raises this error whenever it is evaluated")
        self._unread = state
        try:
            warnings.warn(self.error, ModelReloadWarning, stacklevel=2)
        except BaseException:  # warnings turned into errors: an exception must not leave __setstate__
            try:
                print(f"ModelReloadWarning: {self.error}", file=sys.stderr, flush=True)
            except BaseException:
                pass

    def energy_forces(self, positions: np.ndarray, cell: Optional[np.ndarray] = None):
        """Energy (eV) and forces (eV/Å, float64 array) at ``positions`` (Å) in ``cell`` (Å, periodic
        only)."""
        from e3pot.data.graph import collate
        from e3pot.data.io import Frame, check_frame
        from e3pot.data.neighbors import frame_to_graph
        from e3pot.model.runtime import check_finite, run_model

        calc = self.calculator
        frame = Frame(numbers=self.numbers, positions=np.ascontiguousarray(positions, dtype=np.float64),
                      cell=self.cell if cell is None else np.asarray(cell, dtype=np.float64), pbc=self.pbc,
                      source=self.source)
        graph = collate([frame_to_graph(check_frame(frame), calc.species, calc.r_max, verlet=calc.verlet)])
        graph = graph.to(device=calc.device)
        energy, forces, _, _ = run_model(calc.model, graph, compute_stress=False, memory_budget=calc.memory_budget)
        check_finite(energy, forces, graph.batch, [self.source])
        return float(energy.detach()[0]), forces.detach().cpu().double().numpy()

    def __call__(self, state):
        from openmm import unit

        if self.error is not None:
            raise RuntimeError(self.error)

        positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer) * NM_TO_ANGSTROM
        cell = None
        if self.periodic:
            cell = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer) * NM_TO_ANGSTROM
        if self.subset is None:
            energy, forces = self.energy_forces(positions, cell)
        else:
            energy, some = self.energy_forces(positions[self.subset], cell)
            forces = np.zeros_like(positions)
            forces[self.subset] = some
        return energy * EV_TO_KJ_PER_MOL, forces * (EV_TO_KJ_PER_MOL * NM_TO_ANGSTROM)
