"""Fixtures shared by the whole test suite (pytest-django provides the Django ones)."""
