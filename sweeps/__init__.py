"""Sweeps: definitions, launchers, the run store, scaling-law fits and prescriptions."""
import os

# The repository root: runs start there and relative paths the README gives resolve there.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
