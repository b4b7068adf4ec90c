"""The calibration of a shallow ensemble's spreads on the validation frames of its run.

Training fits it at its end, on the averaged weights it writes; ``e3pot export-checkpoint`` fits it again on
a checkpoint's averaged weights and the same frames. Both call :func:`calibrate`, so the same weights on the
same frames give the same factors.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, List, Sequence

import numpy as np

# Below this many validation frames the factors say little: the energy factor is the root mean square of n
# ratios error/spread, whose relative error for Gaussian errors is about 1/sqrt(2 n) (22 % at 10 frames, 50 %
# at 2, 71 % at 1). The force components of a frame are not independent samples (they share its geometry and
# its error of the whole), so frames are counted for the forces too.
MIN_FRAMES = 10


@dataclasses.dataclass
class Fitted:
    """The factors (:class:`~e3pot.model.ensemble.Calibration`), the number of frames each was fitted on, and
    what a user should know about them (one line each)."""

    calibration: Any  # e3pot.model.ensemble.Calibration
    energy_frames: int
    forces_frames: int
    warnings: List[str]

    @property
    def frames(self) -> int:
        return max(self.energy_frames, self.forces_frames)

    def metadata(self) -> dict:
        extra = {"fitted_on": f"{self.frames} validation frames"}
        if self.energy_frames != self.forces_frames:
            extra.update(energy_frames=self.energy_frames, forces_frames=self.forces_frames)
        if self.warnings:
            extra["warnings"] = list(self.warnings)
        return self.calibration.metadata(**extra)


def _fit(model, dataset, indices: Sequence[int], batch_size: int):
    import torch

    from e3pot.data.dataset import collate_batch
    from e3pot.model.ensemble import fit_calibration

    device = next(model.parameters()).device

    def batches():
        for start in range(0, len(indices), batch_size):
            graph, labels, _ = collate_batch([dataset[k] for k in indices[start:start + batch_size]])
            yield graph.to(device=device), labels.to(device=device)

    with torch.enable_grad():
        return fit_calibration(model, batches())


def calibrate(model, dataset, batch_size: int) -> Fitted:
    """Fit the factors of the spreads of ``model`` (a shallow ensemble) on ``dataset`` (the validation graphs, for
    the model's species), in batches of ``batch_size`` frames
    (:func:`e3pot.model.ensemble.fit_calibration`). The energy factor is fitted on the frames with an energy label,
    the forces factor on those with forces; a factor with no frame to fit stays 1 (the raw spread)."""
    from e3pot.model.ensemble import Calibration

    model = model.eval()
    cols = dataset.frame_columns()
    n = len(dataset)
    with_energy = [int(k) for k in np.flatnonzero(cols["has_energy"])]
    with_forces = [int(k) for k in np.flatnonzero(cols["has_forces"])]
    heads = getattr(model, "num_heads", "the")
    warnings = []
    if len(with_energy) == n and len(with_forces) == n:
        calibration = _fit(model, dataset, list(range(n)), batch_size)
    else:
        energy = _fit(model, dataset, with_energy, batch_size).energy if with_energy else 1.0
        forces = _fit(model, dataset, with_forces, batch_size).forces if with_forces else 1.0
        calibration = Calibration(energy, forces)
        for what, frames in (("energy", with_energy), ("forces", with_forces)):
            if not frames:
                warnings.append(f"no validation frame has a{'n' if what == 'energy' else ''} {what} label: the "
                                f"{what} spreads of the {heads} heads are left uncalibrated (raw)")
    counted = [(what, len(frames)) for what, frames in (("energy", with_energy), ("forces", with_forces)) if frames]
    what, fewest = min(counted, key=lambda item: item[1]) if counted else ("energy", 0)
    if 0 < fewest < MIN_FRAMES:
        scope = "" if len(with_energy) == len(with_forces) else f" (its {what} factor)"
        warnings.append(f"the calibration of the {heads} heads' spreads{scope} was fitted on {fewest} validation "
                        f"frame{'s' if fewest != 1 else ''}, fewer than {MIN_FRAMES}: its factors are uncertain by "
                        f"about {1 / math.sqrt(2 * fewest):.0%}; validate on more frames (data.n_val, "
                        "data.val_fraction or data.val_file)")
    return Fitted(calibration, len(with_energy), len(with_forces), warnings)
