"""The emitter: SymPy expressions -> torch source text -> files. The only place that prints."""
