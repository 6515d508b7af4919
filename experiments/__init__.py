"""Experiments that use the synthct package: real-scan (``aanlib``) and phantom studies.

Run them from the repository root, e.g. ``python -m experiments.aanlib --help``.
"""
