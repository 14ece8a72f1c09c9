"""Sweeps: run store, scaling-law fits, prescriptions and plots (see DESIGN.md, Scaling laws)."""
