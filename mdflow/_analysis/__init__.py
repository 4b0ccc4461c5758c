"""Analyses of finished runs: primal-dual equivalence, KKT errors, stages, the discrete optimizer counterpart, reference interpolators, and the per-run hook (`analyze`)."""
