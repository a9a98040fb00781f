"""Holds the sitecustomize.py that canopy-run puts first on PYTHONPATH."""
