"""End-to-end fixtures: ``launch`` (see launching.py)."""

from launching import launch  # noqa: F401  (registers the fixture)
