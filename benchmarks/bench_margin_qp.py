"""Max-margin QP solver: which solver computes the ℓ2 max-margin reference (the hard-margin SVM without bias,
`min ½‖v‖² s.t. y_i⟨x_i, v⟩ ≥ 1`), measured on time and accuracy.

Data: `mdflow.separable_gaussian(n, d, k=5, seed)`, scaled as the module scales
them (entries ≤ 1). Each solver returns a direction `v` and dual weights α ≥ 0; the module's own
certificate scores both: the relative duality gap `(‖Zᵀλ‖₂ − min_i (Zw)_i)/‖Zᵀλ‖₂` (`w = v/‖v‖`,
`λ = α/Σα`) and the KKT residual (stationarity `‖w − Zᵀλ/‖Zᵀλ‖‖`, complementary slackness). Each cell
is the worst over `--seeds` of: time, the best of `--repeats` calls (one call when it takes longer than
`--budget`); gap and KKT residual. The first call also warms imports and caches.

Candidates: scipy's `nnls` on Lawson–Hanson's least-distance form (what mdflow uses); L-BFGS-B and
SLSQP on the dual (a bound-constrained QP in α); SLSQP and trust-constr on the primal; and three
dedicated packages on the primal: clarabel (interior point), quadprog (Goldfarb–Idnani dual active set)
and cvxopt (interior point), each skipped when not installed (`pip install clarabel quadprog cvxopt`;
none is a dependency of mdflow).

    .venv/bin/python benchmarks/bench_margin_qp.py                 # n×d = 20×60, 100×1000, 500×50
    .venv/bin/python benchmarks/bench_margin_qp.py --sizes 2000x50 --only nnls quadprog
    .venv/bin/python benchmarks/bench_margin_qp.py --sizes 50x10 200x20 --shrink 1e-6   # tiny margins

Prints a markdown table. Timings on a shared machine are noisy: run it alone, and with
`OPENBLAS_NUM_THREADS=1` where other processes compete for the cores (oversubscribed BLAS threads made
one 100×1000 least-squares solve take 0.8 s instead of 0.03 s here).
"""

import argparse
import time

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)  # mdflow's data are float64

import mdflow  # noqa: E402
from mdflow._analysis.margins import _certificate, _svm  # noqa: E402


def nnls_ldp(Z):
    return _svm(Z)


def _dual_qp(Z):
    K = Z @ Z.T
    ones = np.ones(Z.shape[0])
    return (lambda a: 0.5 * a @ K @ a - ones @ a), (lambda a: K @ a - ones)


def lbfgsb_dual(Z):
    import scipy.optimize

    f, g = _dual_qp(Z)
    res = scipy.optimize.minimize(f, np.zeros(Z.shape[0]), jac=g, method="L-BFGS-B",
                                  bounds=[(0, None)] * Z.shape[0],
                                  options={"ftol": 1e-16, "gtol": 1e-14, "maxiter": 100_000, "maxcor": 50})
    return Z.T @ res.x, res.x


def slsqp_dual(Z):
    import scipy.optimize

    f, g = _dual_qp(Z)
    res = scipy.optimize.minimize(f, np.zeros(Z.shape[0]), jac=g, method="SLSQP", bounds=[(0, None)] * Z.shape[0],
                                  options={"ftol": 1e-16, "maxiter": 10_000})
    return Z.T @ res.x, res.x


def slsqp_primal(Z):
    import scipy.optimize

    n, d = Z.shape
    cons = {"type": "ineq", "fun": lambda v: Z @ v - 1.0, "jac": lambda v: Z}
    res = scipy.optimize.minimize(lambda v: 0.5 * v @ v, np.zeros(d), jac=lambda v: v, method="SLSQP",
                                  constraints=[cons], options={"ftol": 1e-16, "maxiter": 10_000})
    alpha = getattr(res, "multipliers", None)  # scipy >= 1.15
    if alpha is None:
        return res.x, _refit_alpha(Z, res.x)
    return res.x, np.asarray(alpha["ineq"] if isinstance(alpha, dict) else alpha)


def trust_constr_primal(Z):
    import scipy.optimize

    n, d = Z.shape
    res = scipy.optimize.minimize(lambda v: 0.5 * v @ v, np.zeros(d), jac=lambda v: v,
                                  hess=lambda v: scipy.sparse.eye(d), method="trust-constr",
                                  constraints=[scipy.optimize.LinearConstraint(Z, 1.0, np.inf)],
                                  options={"gtol": 1e-14, "xtol": 1e-16, "maxiter": 10_000})
    return res.x, -np.asarray(res.v[0])


def _refit_alpha(Z, v):
    """α on the active constraints from stationarity `v = Zᵀα` (least squares), for solvers without duals."""
    active = np.flatnonzero(Z @ v <= 1 + 1e-8)
    alpha = np.zeros(Z.shape[0])
    alpha[active] = np.linalg.lstsq(Z[active].T, v, rcond=None)[0]
    return alpha


def clarabel_primal(Z):
    import clarabel
    import scipy.sparse

    n, d = Z.shape
    settings = clarabel.DefaultSettings()
    settings.verbose = False
    settings.tol_gap_abs = settings.tol_gap_rel = settings.tol_feas = 1e-12
    solver = clarabel.DefaultSolver(scipy.sparse.eye(d, format="csc"), np.zeros(d), scipy.sparse.csc_matrix(-Z),
                                    -np.ones(n), [clarabel.NonnegativeConeT(n)], settings)
    sol = solver.solve()
    return np.asarray(sol.x), np.asarray(sol.z)


def quadprog_primal(Z):
    import quadprog

    n, d = Z.shape
    # G = I passed factorized (R⁻¹ = I): no d×d factorization.
    v, _, _, _, alpha, _ = quadprog.solve_qp(np.eye(d), np.zeros(d), np.ascontiguousarray(Z.T), np.ones(n),
                                             0, True)
    return v, alpha


def cvxopt_primal(Z):
    import cvxopt
    import cvxopt.solvers

    n, d = Z.shape
    cvxopt.solvers.options.update({"show_progress": False, "abstol": 1e-12, "reltol": 1e-12, "feastol": 1e-12,
                                   "maxiters": 200})
    sol = cvxopt.solvers.qp(cvxopt.spmatrix(1.0, range(d), range(d)), cvxopt.matrix(np.zeros(d)),
                            cvxopt.matrix(-Z), cvxopt.matrix(-np.ones(n)))
    return np.asarray(sol["x"]).ravel(), np.asarray(sol["z"]).ravel()


SOLVERS = {
    "scipy nnls, least-distance form (mdflow)": nnls_ldp,
    "scipy L-BFGS-B (dual)": lbfgsb_dual,
    "scipy SLSQP (dual)": slsqp_dual,
    "scipy SLSQP (primal)": slsqp_primal,
    "scipy trust-constr (primal)": trust_constr_primal,
    "clarabel 0.11 (primal)": clarabel_primal,
    "quadprog 0.1.14 (primal)": quadprog_primal,
    "cvxopt 1.3 (primal)": cvxopt_primal,
}


def shrunk(X, y, w_t, factor):
    """`(X, y)` with each point's component along the (unit) teacher `w_t` multiplied by `factor`."""
    return X + np.outer((factor - 1.0) * (X @ w_t), w_t), y


def measure(solver, Z, repeats, budget):
    best, out = np.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = solver(Z)
        best = min(best, time.perf_counter() - start)
        if best > budget:
            break
    return best, out


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["20x60", "100x1000", "500x50"], help="n×d, e.g. 20x60")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="data seeds (the table's worst)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per solver (the best counts)")
    parser.add_argument("--budget", type=float, default=10.0, help="seconds after which one call is not repeated")
    parser.add_argument("--only", nargs="*", help="solver names containing any of these words")
    parser.add_argument("--shrink", type=float, default=1.0,
                        help="move each point to this fraction of its distance from the teacher's hyperplane "
                             "(1e-6: margins far below ‖x_i‖, the ill-conditioned case)")
    return parser.parse_args(argv)


def _data(n, d, seed):
    p = mdflow.separable_gaussian(n, d, 5, seed=seed)
    return np.asarray(p.X), np.asarray(p.y), np.asarray(p.w_star)


def main(argv=None):
    args = parse(argv)
    names = [s for s in SOLVERS if not args.only or any(w.lower() in s.lower() for w in args.only)]
    print("| solver | n × d | time (s) | relative duality gap | KKT residual | support points |")
    print("|---|---|---:|---:|---:|---:|")
    for size in args.sizes:
        n, d = (int(v) for v in size.split("x"))
        data = [shrunk(*_data(n, d, seed), args.shrink) for seed in args.seeds]
        for name in names:
            times, gaps, kkts, supports = [], [], [], []
            try:
                for X, y in data:
                    Z = y[:, None] * X
                    Zs = Z / np.max(np.abs(Z))
                    seconds, (v, alpha) = measure(SOLVERS[name], Zs, args.repeats, args.budget)
                    cert = _certificate("l2", Z, v, alpha)
                    times.append(seconds)
                    gaps.append(abs(cert.gap))
                    kkts.append(cert.kkt)
                    supports.append(int(np.sum(cert.lam > 1e-9 * np.max(cert.lam))))
            except ImportError as exc:
                print(f"| {name} | {n} × {d} | not installed ({exc.name}) | | | |")
                continue
            print(f"| {name} | {n} × {d} | {max(times):.3g} | {max(gaps):.1e} | {max(kkts):.1e} | "
                  f"{min(supports)}–{max(supports)} |", flush=True)


if __name__ == "__main__":
    main()
