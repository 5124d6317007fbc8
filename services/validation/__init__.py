"""Validation: exact answer normalisation and matching (CoT), and the program sandbox (PoT)."""
