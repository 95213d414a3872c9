"""Fixtures: a tiny SmolVLM exported once per session (see tests/ort_artifacts.py)."""

from ort_artifacts import exported_copy, exported_tiny, tiny_tree  # noqa: F401  (pytest fixtures)
