"""Sweeps: definitions, launchers, the run store, scaling-law fits and prescriptions."""
