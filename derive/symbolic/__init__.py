"""Symbolic core: safe parsing of user expressions, admissibility checks and the SymPy derivations."""
