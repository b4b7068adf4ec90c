"""e3pot: E(3)-equivariant machine-learned interatomic potentials."""
__version__ = "0.1.0"

from e3pot.data.graph import AtomicGraph, Labels, collate  # noqa: E402
from e3pot.model.forces import Prediction  # noqa: E402
from e3pot.model.runtime import evaluate  # noqa: E402
from e3pot.model.io import load_model, save_model  # noqa: E402
from e3pot.model.potential import E3Potential  # noqa: E402
from e3pot.predict import predict  # noqa: E402
from e3pot.calculator import E3PotCalculator, UncertainStructure  # noqa: E402
from e3pot.model.ensemble import Committee  # noqa: E402
from e3pot.select import select_frames  # noqa: E402
from e3pot.allocator import tune_allocator  # noqa: E402

__all__ = ["AtomicGraph", "Labels", "collate", "Prediction", "evaluate", "load_model", "save_model",
           "E3Potential", "predict", "E3PotCalculator", "UncertainStructure", "Committee",
           "select_frames", "tune_allocator", "__version__"]
