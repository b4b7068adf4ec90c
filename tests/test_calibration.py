"""``e3pot.calibration`` on hand-computed examples and on synthetic errors drawn from known Gaussians:
calibrated stds score near 0, stds five times too small score far from it, and the fitted scale
recovers the factor the errors were drawn with."""
import json
import math

import numpy as np
import pytest

from e3pot.calibration import (UncertaintyErrors, binned, fit_scale, force_components, miscalibration_area,
                               plot_calibration, spearman, summary)


def gaussian_errors(n=20_000, factor=1.0, seed=0):
    """Errors drawn from N(0, (factor·s_i)²) with random stds s_i in [0.01, 0.5] (eV)."""
    rng = np.random.default_rng(seed)
    std = rng.uniform(0.01, 0.5, n)
    return factor * std * rng.standard_normal(n), std


# -- spearman ---------------------------------------------------------------------------------------

def test_spearman_with_ties_by_hand():
    # ranks of a: 1, 2.5, 2.5, 4; of b: 1, 3, 2, 4; centred: (-1.5, 0, 0, 1.5) and (-1.5, .5, -.5, 1.5)
    # rho = 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    assert spearman(np.array([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0, 4.0])) == pytest.approx(math.sqrt(0.9))


def test_spearman_monotone_and_reversed():
    x = np.random.default_rng(1).normal(size=50)
    assert spearman(x, np.exp(3 * x)) == pytest.approx(1.0)
    assert spearman(x, -x ** 3) == pytest.approx(-1.0)


def test_spearman_undefined_cases():
    assert math.isnan(spearman(np.array([1.0]), np.array([2.0])))
    assert math.isnan(spearman(np.array([1.0, 2.0, 3.0]), np.array([5.0, 5.0, 5.0])))
    with pytest.raises(ValueError, match="one length"):
        spearman(np.arange(3.0), np.arange(4.0))


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(2)
    a = rng.integers(0, 6, 40).astype(float)  # many ties
    b = a + rng.integers(0, 4, 40)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)
    c, d = rng.normal(size=100), rng.normal(size=100)
    assert spearman(c, d) == pytest.approx(stats.spearmanr(c, d)[0], abs=1e-12)


# -- miscalibration area, scale, bins ---------------------------------------------------------------

def test_miscalibration_area_of_calibrated_stds_is_small():
    errors, std = gaussian_errors()
    area = miscalibration_area(errors, std)
    assert 0.0 <= area < 0.02
    assert miscalibration_area(np.abs(errors), std) == pytest.approx(area)  # the sign does not matter


def test_miscalibration_area_of_overconfident_stds_is_large():
    errors, std = gaussian_errors(factor=5.0)
    assert 0.2 < miscalibration_area(errors, std) <= 0.5
    small, std = gaussian_errors(factor=0.2)  # underconfident
    assert 0.2 < miscalibration_area(small, std) <= 0.5


def test_miscalibration_area_bounds():
    errors, std = gaussian_errors(n=500)
    assert 0.4 < miscalibration_area(1e6 * errors, std) <= 0.5  # every error far outside
    assert 0.4 < miscalibration_area(np.zeros(500), std) <= 0.5  # every error at zero
    assert math.isnan(miscalibration_area(np.zeros(0), np.zeros(0)))


def test_fit_scale_recovers_the_factor():
    errors, std = gaussian_errors(factor=3.0)
    assert fit_scale(errors, std) == pytest.approx(3.0, rel=0.03)
    assert miscalibration_area(errors, fit_scale(errors, std) * std) < 0.02


def test_fit_scale_refuses_zero_and_missing_stds():
    with pytest.raises(ValueError, match="zero"):
        fit_scale(np.array([0.1, 0.2]), np.zeros(2))
    with pytest.raises(ValueError, match="none"):
        fit_scale(np.zeros(0), np.zeros(0))
    assert np.isfinite(fit_scale(np.array([0.1, 0.2]), np.array([0.0, 1.0])))  # one zero std is floored


def test_binned_equal_counts_sorted_by_std():
    errors, std = gaussian_errors(n=1005)
    b = binned(errors, std, n_bins=10)
    assert b["count"].sum() == 1005 and b["count"].max() - b["count"].min() <= 1
    assert np.all(np.diff(b["std"]) > 0)
    assert np.allclose(b["rmse"] / b["std"], 1.0, atol=0.3)
    assert len(binned(errors[:3], std[:3], n_bins=10)["count"]) == 3  # empty bins dropped
    lowest = np.argsort(std)[:101]
    assert b["std"][0] == pytest.approx(np.sqrt(np.mean(std[lowest] ** 2)))
    assert b["rmse"][0] == pytest.approx(np.sqrt(np.mean(errors[lowest] ** 2)))


def test_force_components():
    err = np.arange(6.0).reshape(2, 3)
    comp, std = force_components(err, np.array([math.sqrt(3.0), 2 * math.sqrt(3.0)]))
    assert np.array_equal(comp, np.arange(6.0))
    assert np.allclose(std, [1, 1, 1, 2, 2, 2])
    with pytest.raises(ValueError, match="one std per atom"):
        force_components(err, np.ones(3))


def test_summary_is_json():
    errors, std = gaussian_errors(n=200)
    s = summary(errors, std)
    assert s["n"] == 200 and s["rmse"] == pytest.approx(np.sqrt(np.mean(errors ** 2)))
    json.dumps(s, allow_nan=False)
    assert summary(errors, np.full(200, 0.1))["spearman"] is None  # constant std: no rank correlation


# -- accumulating structures, the report and the plot -----------------------------------------------

def filled(seed=3, n_structures=60):
    """An :class:`UncertaintyErrors` of calibrated synthetic structures, and its raw arrays."""
    rng = np.random.default_rng(seed)
    unc, e, f_err, f_std = UncertaintyErrors(), [], [], []
    for _ in range(n_structures):
        n = int(rng.integers(2, 9))
        e_std = rng.uniform(0.005, 0.05) * n
        e_err = e_std * rng.standard_normal()
        std_atom = rng.uniform(0.02, 0.2, n)
        forces = std_atom[:, None] / math.sqrt(3.0) * rng.standard_normal((n, 3))
        unc.add(e_err, e_std, n, forces, std_atom)
        e.append((e_err / n, e_std / n))
        f_err.append(forces.ravel())
        f_std.append(np.repeat(std_atom / math.sqrt(3.0), 3))
    return unc, np.array(e), np.concatenate(f_err), np.concatenate(f_std)


def test_uncertainty_errors_metrics_and_report():
    unc, e, f_err, f_std = filled()
    metrics = unc.metrics()
    assert set(metrics) == {"energy_per_atom", "forces"}
    assert metrics["energy_per_atom"] == summary(e[:, 0], e[:, 1])
    assert metrics["forces"] == summary(f_err, f_std)
    assert metrics["forces"]["n"] == f_err.size
    json.dumps(metrics, allow_nan=False)
    report = unc.report()
    for q in ("energy_per_atom", "forces"):
        m = metrics[q]
        assert f"{m['spearman']:.3f}" in report
        assert f"{m['miscalibration_area']:.3f}" in report
        assert f"{1000 * m['rmse']:.3f}" in report  # meV/atom and meV/Å
        assert f"{1000 * m['rms_std']:.3f}" in report
    assert "meV/atom" in report and "meV/Å" in report


def test_uncertainty_errors_absent_quantities_and_bad_input():
    unc = UncertaintyErrors()
    assert unc.metrics() == {} and unc.report() == ""
    unc.add(0.1, 0.2, 4)
    assert set(unc.metrics()) == {"energy_per_atom"}
    assert unc.metrics()["energy_per_atom"]["rmse"] == pytest.approx(0.025)
    with pytest.raises(ValueError, match="both"):
        unc.add(0.1, 0.2, 2, np.zeros((2, 3)), None)
    with pytest.raises(ValueError, match="2 atoms in a structure of 3"):
        unc.add(0.1, 0.2, 3, np.zeros((2, 3)), np.ones(2))
    forces_only = UncertaintyErrors()
    forces_only.add(None, None, 2, np.ones((2, 3)), np.ones(2))
    assert set(forces_only.metrics()) == {"forces"}


def test_plot_calibration_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    unc, *_ = filled()
    path = tmp_path / "calibration.png"
    assert plot_calibration(str(path), unc, title="synthetic") is None
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    forces_only = UncertaintyErrors()
    forces_only.add(None, None, 2, np.ones((2, 3)), np.ones(2))
    plot_calibration(str(tmp_path / "half.png"), forces_only)  # the energy panel says "no data"
    assert (tmp_path / "half.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_calibration(str(tmp_path / "empty.png"), UncertaintyErrors())
    assert (tmp_path / "empty.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
