"""One run from options to a result directory, and grids of runs (sweeps)."""
