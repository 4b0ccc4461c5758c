"""Work–precision: global error against solve time for every integrator a researcher could pick.

Problem `sparse_gaussian(100, 1000, 5, seed=0)`, α = 0.01; panels GF, SSD at ε ∈ {1e-2, 1e-4, 1e-6} and
the Adam flow at optax's defaults (η = 1e-3, β1 = 0.9, β2 = 0.999, i.e. τ1 = 0.01, τ2 = 1, ε = 1e-8;
docs/math.md §8). Every run stops at interpolation (relative residual `--stop`). Methods: mdflow
`auto`, `tsit5`, `rodas4` and diffrax's `kvaerno5` (all through `mdflow.solve`), scipy `solve_ivp`
LSODA, Radau and BDF on a NumPy field with the exact Jacobian (NumPy for GF/SSD; for Adam a jitted
`CoordinatewiseJacobian`), each at rtol `--rtols` with atol = rtol/100.

Errors, against a reference (mdflow Rodas4 at `--ref-rtol`), confirmed by a second method at the same
tolerance (the first of `--ref-methods` to finish within `--ref-cap`; for Adam scipy's DOP853, then
LSODA), their gap printed per panel; relative to `‖w_end,ref‖`:
- *end point*: `‖w_end − w_ref(t_end)‖`, the reference at the run's own stop time `t_end` (mdflow stops
  at the end of the step that crosses the stop, scipy at the root: comparing the two stopped states
  measures where each puts the stop, 1e-7 in the smoke run, not the integration);
- *trajectory*: `max_t ‖w(t) − w_ref(t)‖` over the saved grid (`--num-ts` log-spaced
  points on [1e-4, t1], each method's own dense output) up to the earlier of the two stops.
Time: mdflow's solve wall time with compilation excluded (each program is compiled once by a solve
on a tiny horizon, reported as `compile s`); scipy's wall time. A cell over `--cap` seconds (scipy:
interrupted; mdflow: its step cap, `--max-steps` or `--kvaerno-max-steps`) is reported as `> cap`, and
the same method's tighter tolerances on that panel are not run (they cost more), except `auto`'s.

    .venv/bin/python benchmarks/work_precision.py --out /tmp/wp             # every panel, method, rtol
    .venv/bin/python benchmarks/work_precision.py --smoke --out /tmp/wp     # tiny sizes, about a minute
    .venv/bin/python benchmarks/work_precision.py --from-json A/work_precision.json B/work_precision.json --out /tmp/wp

Writes work_precision.md (the table and the ratios), work_precision.json and
work_precision.png (solve time against error, log–log, one column per flow, end-point error above,
trajectory error below) to `--out`; `--from-json` merges panels run in separate processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

import mdflow  # noqa: E402
from mdflow._solver.linear import CoordinatewiseJacobian  # noqa: E402

MDFLOW_METHODS = ("auto", "tsit5", "rodas4", "kvaerno5")
SCIPY_METHODS = ("LSODA", "Radau", "BDF")
METHODS = MDFLOW_METHODS + SCIPY_METHODS
ALPHA = 0.01
PANELS = {  # name -> (flow kind, parameters besides α)
    "GF": ("gf", {}),
    "SSD ε=1e-2": ("ssd", {"eps": 1e-2}),
    "SSD ε=1e-4": ("ssd", {"eps": 1e-4}),
    "SSD ε=1e-6": ("ssd", {"eps": 1e-6}),
    "Adam": ("adam", {"eps": 1e-8, "tau1": 0.01, "tau2": 1.0}),
}


class _Timeout(Exception):
    pass


def numpy_field(flow, problem):
    """The flow's field (and exact Jacobian) on the flat state, in NumPy: scipy's calls then cost
    microseconds instead of a jitted call's dispatch. GF and SSD in log coordinates
    (`ṗ = −2g·c_u`, `q̇ = 2g·c_v`; c = 1 for GF, `1/(2u|g| + ε)` for SSD); Adam's field in NumPy with
    its Jacobian from `CoordinatewiseJacobian` (jitted). Checked against the flow's own field and
    `jax.jacfwd` of it at the start and at a perturbed state."""
    X, y, s = np.asarray(problem.X), np.asarray(problem.y), float(problem.scale)
    d = X.shape[1]
    shape = flow.init(problem).shape
    grad = lambda w: s * ((X @ w - y) @ X)  # noqa: E731  (the residual first: it is round-off at the end)

    if flow.kind in ("gf", "ssd"):
        gram = s * X.T @ X
        eps = float(flow.eps) if flow.kind == "ssd" else None

        def parts(z):
            u, v = np.exp(z[:d]), np.exp(z[d:])
            g = grad(u * u - v * v)
            if eps is None:
                return u, v, g, np.ones(d), np.ones(d)
            return u, v, g, 1 / (2 * u * np.abs(g) + eps), 1 / (2 * v * np.abs(g) + eps)

        def field(t, z):
            u, v, g, cu, cv = parts(z)
            return np.concatenate([-2 * g * cu, 2 * g * cv])

        def jacobian(t, z):
            # ∂g/∂p = G·2u², ∂g/∂q = −G·2v² (G the scaled Gram matrix); for SSD c depends on g and on
            # the row's own coordinate: ∂(g·c)/∂g = ε c², and ∂ṗ/∂p gains 4u|g|g c_u² (q̇ likewise).
            u, v, g, cu, cv = parts(z)
            dg = np.hstack([gram * (2 * u * u), -gram * (2 * v * v)])
            ku, kv = (cu, cv) if eps is None else (eps * cu * cu, eps * cv * cv)
            jac = np.vstack([(-2 * ku)[:, None] * dg, (2 * kv)[:, None] * dg])
            if eps is not None:
                jac[np.arange(d), np.arange(d)] += 4 * u * np.abs(g) * g * cu * cu
                jac[d + np.arange(d), d + np.arange(d)] -= 4 * v * np.abs(g) * g * cv * cv
            return jac

        weights = lambda z: np.exp(2 * z[:d]) - np.exp(2 * z[d:])  # noqa: E731
    else:
        tau1, tau2, eps = float(flow.tau1), float(flow.tau2), float(flow.eps)
        jac_jax = jax.jit(lambda t, z: CoordinatewiseJacobian.from_flow(flow, problem, z.reshape(shape), t=t).as_matrix())

        def field(t, z):
            u, v, mu, mv, su, sv = z.reshape(6, d)
            g = grad(u * u - v * v)
            G = np.concatenate([2 * u * g, -2 * v * g])
            m, sq = np.concatenate([mu, mv]), np.concatenate([su, sv])
            c1, c2 = -np.expm1(-t / tau1), -np.expm1(-t / tau2)
            m_hat = m / c1 if c1 > 0 else G
            s_hat = sq / c2 if c2 > 0 else G * G
            theta_dot = -m_hat / (np.sqrt(s_hat) + eps)
            return np.concatenate([theta_dot, (G - m) / tau1, (G * G - sq) / tau2])

        def jacobian(t, z):
            return np.asarray(jac_jax(jnp.asarray(t, z.dtype), jnp.asarray(z)))

        weights = lambda z: z[:d] ** 2 - z[d : 2 * d] ** 2  # noqa: E731

    ours = jax.jit(lambda t, z: flow.vector_field(t, z.reshape(shape), problem).reshape(-1))
    z0 = np.asarray(flow.init(problem)).reshape(-1)
    rng = np.random.default_rng(0)
    for t, z in ((0.0, z0), (0.3, z0 + (rng.uniform(-1, 1, z0.shape) if flow.kind != "adam" else rng.uniform(0, 0.01, z0.shape)))):
        mine = field(t, z)
        np.testing.assert_allclose(mine, np.asarray(ours(t, jnp.asarray(z))), rtol=1e-9, atol=1e-12 * np.max(np.abs(mine)))
        exact = np.asarray(jax.jacfwd(ours, argnums=1)(t, jnp.asarray(z)))
        np.testing.assert_allclose(jacobian(t, z), exact, rtol=1e-9, atol=1e-12 * np.max(np.abs(exact)))
    return field, jacobian, weights


def rel_residual(problem):
    X, y = np.asarray(problem.X), np.asarray(problem.y)
    return lambda w: np.linalg.norm(X @ w - y) / np.linalg.norm(y)


def run_scipy(method, flow, problem, ts, rtol, stop, cap, numpy_fns):
    """One scipy solve with the stop event; the saved grid from its dense output. `None` past `cap` s."""
    field, jacobian, weights = numpy_fns
    res = rel_residual(problem)
    start = time.perf_counter()

    def timed(fn):
        def call(t, z):
            if time.perf_counter() - start > cap:
                raise _Timeout
            return fn(t, z)
        return call

    def event(t, z):
        return res(weights(z)) - stop

    event.terminal = True
    z0 = np.asarray(flow.init(problem)).reshape(-1)
    try:
        sol = solve_ivp(timed(field), (0.0, float(ts[-1])), z0, method=method, rtol=rtol, atol=rtol / 100,
                        t_eval=ts, events=event, dense_output=True,
                        **({} if method == "DOP853" else {"jac": timed(jacobian)}))
    except _Timeout:
        return {"wall": cap, "status": f"> cap ({cap:g} s)"}
    wall = time.perf_counter() - start
    if sol.status != 1:
        return {"wall": wall, "status": "not stopped by t1" if sol.status == 0 else f"failed ({sol.message})"}
    w_end = weights(sol.y_events[0][0])
    ws = [weights(z) for z in sol.y.T] + [w_end] * (len(ts) - sol.y.shape[1])  # held after the stop, as mdflow
    return {"wall": wall, "compile": None, "steps": len(sol.sol.ts) - 1, "nfev": int(sol.nfev), "t_end": float(sol.t_events[0][0]),
            "ws": np.stack(ws), "w_end": w_end, "status": "ok"}


def mdflow_policy(method, rtol, args, t1, max_steps):
    return mdflow.SolvePolicy(solver=method, rtol=rtol, atol=rtol / 100, t1=t1, num_ts=args.num_ts, t_min=args.t_min,
                              stop_rel_residual=args.stop, max_steps=max_steps, save="trajectory")


_compiled: dict = {}


def run_mdflow(method, flow, problem, rtol, args):
    """One mdflow solve, compiled beforehand by a solve on a tiny horizon (its wall time is the compile)."""
    max_steps = args.kvaerno_max_steps if method == "kvaerno5" else args.max_steps
    key = (method, type(flow.integrand(problem)).__name__)
    if key not in _compiled:
        tiny = mdflow_policy(method, 1e-3, args, args.t_min * 10, max_steps)
        t = time.perf_counter()
        jax.block_until_ready(mdflow.solve(flow, problem, tiny))
        _compiled[key] = time.perf_counter() - t
    compile_s = _compiled[key]
    policy = mdflow_policy(method, rtol, args, args.t1, max_steps)
    t = time.perf_counter()
    sol = jax.block_until_ready(mdflow.solve(flow, problem, policy))
    wall = time.perf_counter() - t
    status = mdflow.status_name(sol.status)
    if status == "max_steps":
        return {"wall": wall, "status": f"> cap ({max_steps} steps in {wall:.0f} s)"}
    if status != "ok" or not bool(sol.stopped):
        return {"wall": wall, "status": f"{status}, stopped={bool(sol.stopped)}"}
    return {"wall": wall, "compile": compile_s, "steps": int(sol.num_steps), "nfev": None,
            "t_end": float(sol.t_end), "ws": np.asarray(sol.ws), "w_end": np.asarray(sol.w_final), "status": "ok"}


def trajectory_error(r, ref, ts):
    upto = (ts > 0) & (ts <= min(r["t_end"], ref["t_end"]))
    return float(np.max(np.linalg.norm(r["ws"][upto] - ref["ws"][upto], axis=1)) / np.linalg.norm(ref["w_end"]))


def reference(flow, problem, ts, args, numpy_fns):
    """mdflow Rodas4 at `--ref-rtol`, and the second method (Radau, or LSODA past `--ref-cap`) with its name."""
    ref = run_mdflow("rodas4", flow, problem, args.ref_rtol, args)
    if ref is None or ref["status"] != "ok":
        raise RuntimeError(f"reference failed: {ref and ref['status']}")
    # Radau factors a dense complex matrix of the state's size per step; for Adam's 6d states an explicit
    # 8th-order method and LSODA.
    for method in args.ref_methods if flow.kind != "adam" else ("DOP853", "LSODA"):
        other = run_scipy(method, flow, problem, ts, args.ref_rtol, args.stop, args.ref_cap, numpy_fns)
        if other["status"] == "ok":
            return ref, method, other
    return ref, None, None


def reference_at(flow, problem, times, args):
    """The reference's weights at `times` (the runs' stop times): Rodas4 at `--ref-rtol` without a stop
    (no stop: with a stop or without, a solve is one compiled program), saved there, `--num-ts − 1` at a time."""
    times = np.unique(times)
    out = {}
    for i in range(0, len(times), args.num_ts - 1):
        chunk = times[i : i + args.num_ts - 1]
        fill = np.geomspace(args.t_min, chunk[0], args.num_ts - len(chunk) + 1)[:-1]  # the grid keeps its length
        grid = np.concatenate([[0.0], fill[: args.num_ts - 1 - len(chunk)], chunk])
        policy = dataclasses.replace(mdflow_policy("rodas4", args.ref_rtol, args, args.t1, args.max_steps),
                                     stop_rel_residual=None)
        sol = mdflow.solve(flow, problem, policy, ts=jnp.asarray(grid))
        if mdflow.status_name(sol.status) != "ok":
            raise RuntimeError(f"reference at the stop times: {mdflow.status_name(sol.status)}")
        out.update(zip(grid[-len(chunk):].tolist(), np.asarray(sol.ws)[-len(chunk):]))
    return out


def end_point_errors(rows, results, flow, problem, args, scale):
    """Each run's end point against the reference at the run's own stop time: a global error, free of
    where each method places the stop (mdflow at the end of the step that crosses it, scipy at the root)."""
    at = reference_at(flow, problem, [r["t_end"] for r in results], args)
    for row, r in zip(rows, results):
        row["err_end"] = float(np.linalg.norm(r["w_end"] - at[r["t_end"]]) / scale)


def matched_ratios(rows, panel, key):
    """At each of auto's errors (`key`: "err_end" or "err_traj"): the time of the fastest scipy method, of
    Tsit5 and of Rodas4 alone there, over auto's time, interpolated on the log–log curves of time against
    that error (None outside a curve's range)."""
    def time_at(method, err):
        pts = sorted((np.log10(r[key]), np.log10(r["wall"])) for r in rows
                     if r["panel"] == panel and r["method"] == method and key in r)
        if not pts or not (pts[0][0] <= np.log10(err) <= pts[-1][0]):
            return None
        return 10 ** np.interp(np.log10(err), [p[0] for p in pts], [p[1] for p in pts])

    out = []
    for r in sorted((r for r in rows if r["panel"] == panel and r["method"] == "auto" and key in r), key=lambda r: -r["rtol"]):
        known = {m: t for m in SCIPY_METHODS if (t := time_at(m, r[key])) is not None}
        best = min(known.items(), key=lambda kv: kv[1]) if known else None
        out.append({"rtol": r["rtol"], "scipy": None if best is None else (best[0], best[1] / r["wall"]),
                    **{m: (None if (t := time_at(m, r[key])) is None else t / r["wall"]) for m in ("tsit5", "rodas4")}})
    return out


def fmt_ratio(x):
    return "—" if x is None else f"{x:.2g}×"


def write_table(rows, panels, refs, args, out):
    lines = [f"Problem `sparse_gaussian({args.n}, {args.d}, {args.k}, seed=0)`, α = {ALPHA}, stop at relative residual "
             f"{args.stop:g}, atol = rtol/100, per-cell cap {args.cap:g} s; jax {jax.__version__}.", "",
             "References (mdflow Rodas4 at rtol {:g}) and their gap to a second method:".format(args.ref_rtol), ""]
    lines += [f"- {p}: {refs[p]}" for p in panels] + [""]
    lines += ["| flow | method | rtol | error end point | error trajectory | solve s | compile s | steps |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
    table = []  # [panel, method, first rtol, last rtol, cells]: cells without a number merge over rtols
    for r in rows:
        if "err_end" in r:
            comp = "" if r["compile"] is None else f"{r['compile']:.1f}"
            steps = f"{r['steps']}" if r["nfev"] is None else f"{r['steps']} ({r['nfev']} nfev)"
            cells = f"{r['err_end']:.1e} | {r['err_traj']:.1e} | {r['wall']:.3g} | {comp} | {steps}"
        else:
            cells = r["status"].replace("> cap (looser rtol was)", "> cap (a looser rtol was)") + " | | | |"
        last = table[-1] if table else None
        if "err_end" not in r and last and last[:2] == [r["panel"], r["method"]] and last[4] == cells:
            last[3] = r["rtol"]
        else:
            table.append([r["panel"], r["method"], r["rtol"], r["rtol"], cells])
    for panel, method, first, last, cells in table:
        rtols = f"{first:g}" if first == last else f"{first:g} … {last:g}"
        lines.append(f"| {panel} | {method} | {rtols} | {cells} |")
    lines += ["", "Time at auto's accuracy over auto's time, at its end-point error (end) and at its trajectory error "
              "(traj), interpolated on each method's log–log curve of time against that error (— where auto's error "
              "is outside the curve's range): the fastest scipy method, Tsit5 alone, Rodas4 alone.", "",
              "| flow | rtol | auto s | scipy / auto, end | scipy / auto, traj | tsit5 / auto, end | tsit5 / auto, traj "
              "| rodas4 / auto, end | rodas4 / auto, traj |", "|---|---|---:|---|---|---:|---:|---:|---:|"]
    for p in panels:
        autos = {r["rtol"]: r for r in rows if r["panel"] == p and r["method"] == "auto" and "err_end" in r}
        end, traj = matched_ratios(rows, p, "err_end"), matched_ratios(rows, p, "err_traj")
        for e, t in zip(end, traj):
            sc = ["—" if m["scipy"] is None else f"{m['scipy'][1]:.2g}× ({m['scipy'][0]})" for m in (e, t)]
            lines.append(f"| {p} | {e['rtol']:g} | {autos[e['rtol']]['wall']:.3g} | {sc[0]} | {sc[1]} | "
                         + " | ".join(fmt_ratio(m[k]) for k in ("tsit5", "rodas4") for m in (e, t)) + " |")
    text = "\n".join(lines) + "\n"
    (out / "work_precision.md").write_text(text)
    return text


def plot(rows, panels, methods, out):
    """Solve time against error, log–log: one column per flow, the end-point error above, the trajectory's below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(panels), figsize=(3.3 * len(panels), 6.2), squeeze=False)
    styles = {"auto": ("k", "o", "-"), "tsit5": ("C0", "s", "-"), "rodas4": ("C1", "D", "-"),
              "kvaerno5": ("C2", "^", "-"), "LSODA": ("C3", "v", "--"), "Radau": ("C4", "<", "--"),
              "BDF": ("C5", ">", "--")}
    for j, panel in enumerate(panels):
        for i, (key, what) in enumerate((("err_end", "end-point error"), ("err_traj", "trajectory error"))):
            ax = axes[i, j]
            for m in methods:
                pts = sorted((r["rtol"], r[key], r["wall"]) for r in rows if r["panel"] == panel and r["method"] == m and key in r)
                if pts:
                    color, marker, ls = styles[m]
                    ax.loglog([p[1] for p in pts], [p[2] for p in pts], color=color, marker=marker, ls=ls, label=m, ms=4)
            ax.set_title(panel if i == 0 else "", fontsize=10)
            ax.set_xlabel(what, fontsize=9)
            if j == 0:
                ax.set_ylabel("solve time (s)", fontsize=9)
            ax.grid(True, which="major", alpha=0.3)
            ax.tick_params(labelsize=8)
    handles = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles.keys()), loc="upper center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(out / "work_precision.png", dpi=100)


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the table, the JSON and the plot")
    p.add_argument("--panels", nargs="+", choices=list(PANELS), help="default: all (--smoke: GF, SSD ε=1e-2)")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), help="default: all (--smoke: auto rodas4 LSODA Radau)")
    p.add_argument("--rtols", type=float, nargs="+", default=[1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10])
    p.add_argument("--ref-rtol", type=float, default=1e-12)
    p.add_argument("--ref-methods", nargs="*", default=["Radau", "LSODA"], choices=SCIPY_METHODS,
                   help="the second reference method: the first of these to finish within --ref-cap (none: skip)")
    p.add_argument("--ref-cap", type=float, default=300.0, help="seconds for the second reference method")
    p.add_argument("--cap", type=float, default=60.0, help="seconds per scipy cell")
    p.add_argument("--max-steps", type=int, default=200_000, help="mdflow's step cap (one compiled program)")
    p.add_argument("--kvaerno-max-steps", type=int, default=200)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--d", type=int, default=1000)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--stop", type=float, default=1e-6, help="stop at this relative residual")
    p.add_argument("--t1", type=float, default=1e6)
    p.add_argument("--t-min", type=float, default=1e-4)
    p.add_argument("--num-ts", type=int, default=60)
    p.add_argument("--from-json", type=Path, nargs="+", default=None,
                   help="solve nothing: merge these work_precision.json files (panels run apart) into --out")
    p.add_argument("--smoke", action="store_true", help="n=20, d=60, rtol 1e-4 1e-6, reference at 1e-10")
    args = p.parse_args()
    if args.smoke:
        args.n, args.d, args.k, args.num_ts = 20, 60, 3, 20
        args.panels = args.panels or ["GF", "SSD ε=1e-2"]
        args.methods = args.methods or ["auto", "rodas4", "LSODA", "Radau"]
        args.rtols, args.ref_rtol, args.cap, args.ref_cap = [1e-4, 1e-6], 1e-10, 30.0, 30.0
    args.panels, args.methods = args.panels or list(PANELS), args.methods or list(METHODS)
    return args


def main():
    args = parse()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        cells, refs = {}, {}  # a later file's cell replaces an earlier one's; a confirmed reference stays
        for path in args.from_json:
            data = json.loads(path.read_text())
            cells.update({(r["panel"], r["method"], r["rtol"]): r for r in data["rows"]})
            refs.update({p: v for p, v in data["refs"].items() if p not in refs or refs[p].startswith("not confirmed")})
        rows = [cells[key] for key in sorted(cells, key=lambda k: (list(PANELS).index(k[0]), METHODS.index(k[1]), -k[2]))]
        panels = [pn for pn in PANELS if pn in refs]
        print(write_table(rows, panels, refs, args, args.out))
        plot(rows, panels, [m for m in METHODS if any(r["method"] == m for r in rows)], args.out)
        return
    problem = mdflow.sparse_gaussian(args.n, args.d, args.k, seed=0)
    ts = mdflow_policy("rodas4", 1e-8, args, args.t1, 1).time_grid()
    rows, refs = [], {}
    for panel in args.panels:
        kind, params = PANELS[panel]
        flow = mdflow.make_flow(kind, problem, alpha=ALPHA, **params)
        numpy_fns = numpy_field(flow, problem)
        t = time.perf_counter()
        ref, second_name, second = reference(flow, problem, ts, args, numpy_fns)
        scale = np.linalg.norm(ref["w_end"])
        print(f"## {panel}: reference t_end {ref['t_end']:.4g}, {ref['steps']} steps, {ref['wall']:.1f} s; "
              f"second method {second_name} [{time.perf_counter() - t:.0f} s]", flush=True)
        done, results = [], []
        for method in args.methods:
            for rtol in sorted(args.rtols, reverse=True):
                row = {"panel": panel, "method": method, "rtol": rtol}
                rows.append(row)
                # A capped method is capped at tighter tolerances too (scipy's and Kvaerno5's cost grows with
                # them, Tsit5 is held to its stability limit); not the switch, which can fail at a loose one.
                if method != "auto" and any(r["method"] == method and r["status"].startswith("> cap") for r in done):
                    row["status"] = "> cap (looser rtol was)"
                    continue
                if method == "kvaerno5" and flow.kind == "adam":
                    row["status"] = "not run (a dense Newton matrix of 6d states per step)"
                    continue
                if method in SCIPY_METHODS:
                    r = run_scipy(method, flow, problem, ts, rtol, args.stop, args.cap, numpy_fns)
                else:
                    r = run_mdflow(method, flow, problem, rtol, args)
                done.append(row)
                if r["status"] != "ok":
                    row.update(status=r["status"], wall=r["wall"])
                else:
                    row.update(status="ok", err_traj=trajectory_error(r, ref, ts), wall=r["wall"], compile=r["compile"],
                               steps=r["steps"], nfev=r["nfev"], t_end=r["t_end"])
                    results.append((row, r))
                detail = (f"traj {row['err_traj']:.1e} {row['wall']:.3g} s {row['steps']} steps"
                          + (f" (compile {row['compile']:.1f} s)" if row.get("compile") else "")
                          if "err_traj" in row else row["status"])
                print(f"{panel} | {method} | {rtol:g} | {detail}", flush=True)
        extra = [] if second is None else [({}, second)]
        end_point_errors([row for row, _ in results + extra], [r for _, r in results + extra], flow, problem, args, scale)
        if second is None:
            refs[panel] = f"not confirmed (second method at {args.ref_rtol:g} over {args.ref_cap:g} s)"
        else:
            refs[panel] = (f"{second_name} at {args.ref_rtol:g}: end point {extra[0][0]['err_end']:.1e}, trajectory "
                           f"{trajectory_error(second, ref, ts):.1e} ({second['wall']:.2g} s)")
        print(f"## {panel}: {refs[panel]}; end-point errors: "
              + ", ".join(f"{row['method']} {row['rtol']:g} {row['err_end']:.1e}" for row, _ in results), flush=True)
        (args.out / "work_precision.json").write_text(json.dumps({"rows": rows, "refs": refs}, indent=1))
    text = write_table(rows, args.panels, refs, args, args.out)
    plot(rows, args.panels, args.methods, args.out)
    print("\n" + text)


if __name__ == "__main__":
    main()
