"""Checks of a model's physics, reusable on any model (placeholder, filled below)."""
from e3pot.testing.models import random_model  # noqa: F401
