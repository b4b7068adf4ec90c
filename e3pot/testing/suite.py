"""The battery as pytest tests: subclass :class:`ModelTests` in a test file and give it a ``model``
fixture (see :mod:`e3pot.testing` for an example)."""
from __future__ import annotations

import pytest

from e3pot.testing import CHECKS, check_model, failed_checks


class ModelTests:
    """One test per check of :data:`~e3pot.testing.CHECKS` and per dtype, for the model of the
    ``model`` fixture. Fixtures a subclass may override (all of class scope):

    - ``model`` (required): the model to check, in any dtype;
    - ``dtype``: ``"float32"`` and ``"float64"`` by default (a parametrised fixture);
    - ``structures``: ``ase.Atoms`` or ``(name, atoms)`` pairs, None for the built-in ones;
    - ``expected_failures``: the checks the model fails by design. Each must fail, so that the
      test keeps saying what the model is;
    - ``skipped_checks``: ``{check: why}`` for checks not to run here.

    The name does not start with ``Test``, so that pytest collects only the subclasses.
    """

    @pytest.fixture(scope="class")
    def model(self):
        raise NotImplementedError("define a `model` fixture that returns the model to check")

    @pytest.fixture(scope="class", params=["float32", "float64"])
    def dtype(self, request):
        return request.param

    @pytest.fixture(scope="class")
    def structures(self):
        return None

    @pytest.fixture(scope="class")
    def expected_failures(self):
        return frozenset()

    @pytest.fixture(scope="class")
    def skipped_checks(self):
        return {}

    @pytest.mark.parametrize("check", CHECKS)
    def test_check(self, model, dtype, structures, expected_failures, skipped_checks, check):
        if check in skipped_checks:
            pytest.skip(skipped_checks[check])
        report = check_model(model, structures, dtype=dtype, checks=[check])
        if check in expected_failures:
            assert check in failed_checks(report), f"{check} was expected to fail, but passed:\n{report.table()}"
        else:
            assert report.passed, report.table()
