"""Solvers: the diffrax call site (`solve`), Rosenbrock methods and the explicit/implicit switch, and their linear algebra (structured Woodbury and dense Jacobians)."""
