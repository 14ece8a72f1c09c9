"""Sweep definitions: each NAME.py exposes get_sweep(arg=None) -> sweeps.define.Sweep."""
