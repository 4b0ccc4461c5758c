"""What a user's JAX program gets when importing mdflow turns on `jax_enable_x64` and sets
`EQX_ON_ERROR=nan` for the whole process, and what `mdflow.solve` does without them.

Each case below runs in a fresh process (no `JAX_ENABLE_X64`, no `EQX_ON_ERROR` in its environment),
in three modes:

- *with*: those side effects, applied explicitly just before `import mdflow` (whatever the tree's
  import does itself);
- *without*: `import mdflow` with any side effect of its own undone (`jax_enable_x64` updates
  ignored during the import, `EQX_ON_ERROR` restored), i.e. the process as the user set it up;
- *user x64*: *without*, then x64 turned on by the program (equinox's default `EQX_ON_ERROR=raise`):
  a float64 user's program, and, in the float32 case (turned on after its first arrays), what an
  mdflow that turned x64 on at its first solve instead of at import would do to it.

Cases:

- `float32`: a float32 program (arrays made and a matmul jitted before the import, more arrays after):
  dtypes, retraces, bytes, a float32 accumulation's value, and the time of one N×N matmul;
- `errors`: the user's own `eqx.error_if` and a `diffrax.diffeqsolve` that runs out of steps
  (`throw=True`, the default), with equinox imported after mdflow;
- `solve`: whether a first `mdflow.solve` runs or refuses; then, past a refusal (the check turned
  off), `mdflow.solve` of GF and SSD (α = 0.1, ε = 0.1) on `mdflow.sparse_gaussian(10, 30, 3)` at the
  default `SolvePolicy` and at a float32-sized `rtol = 1e-5, atol = 1e-7` (saving the end point): the
  dtype, status, steps and the relative error of `w(t1)` against the float64 solve at the default
  tolerances (*with*).

    .venv/bin/python benchmarks/import_side_effects.py            # N = 2000, prints the tables
    .venv/bin/python benchmarks/import_side_effects.py --n 500    # a smaller matmul
    .venv/bin/python benchmarks/import_side_effects.py --json out.json

The float32 accumulation adds 0.1 a million times in a `fori_loop` (exact: 100000).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

MODES = {
    "with": """
import os
import jax
os.environ.setdefault("EQX_ON_ERROR", "nan")
jax.config.update("jax_enable_x64", True)
import mdflow
""",
    "without": """
import os
import jax
_env, _update = os.environ.get("EQX_ON_ERROR"), jax.config.update
jax.config.update = lambda name, value: None if name == "jax_enable_x64" else _update(name, value)
import mdflow
jax.config.update = _update
if _env is None:
    os.environ.pop("EQX_ON_ERROR", None)
""",
}
# The user's own float64 program: no side effects of mdflow's, x64 turned on by the user first.
MODES["user x64"] = 'import jax\njax.config.update("jax_enable_x64", True)\n' + MODES["without"]

FLOAT32 = """
import time
import jax, jax.numpy as jnp, numpy as np
a = jnp.ones((N, N))
f = jax.jit(lambda x, y: x @ y)
f(a, a).block_until_ready()
{mode}
b = jnp.ones((N, N))
z = jnp.asarray(np.linspace(0.0, 1.0, 3))
k = jax.random.normal(jax.random.key(0), (3,))
mixed = f(a, b).block_until_ready()
acc = jax.jit(lambda: jax.lax.fori_loop(0, 10**6, lambda i, s: s + 0.1, jnp.zeros(())))()

def best(x, y, reps=5):
    f(x, y).block_until_ready()
    times = []
    for _ in range(reps):
        t = time.perf_counter(); f(x, y).block_until_ready(); times.append(time.perf_counter() - t)
    return min(times)

out = {{"x64": bool(jax.config.jax_enable_x64), "EQX_ON_ERROR": os.environ.get("EQX_ON_ERROR"),
       "before": str(a.dtype), "after": str(b.dtype), "from_numpy": str(z.dtype), "random": str(k.dtype),
       "mixed_matmul": str(mixed.dtype), "traces_of_f": f._cache_size(), "bytes_after": int(b.nbytes),
       "sum_0.1_x1e6": float(acc), "sum_dtype": str(acc.dtype),
       "matmul_before_s": best(a, a), "matmul_after_s": best(b, b)}}
"""

ERRORS = """
{mode}
import jax, jax.numpy as jnp
import equinox as eqx, diffrax

def attempt(fn):
    try:
        return "returned " + repr(fn())
    except Exception as e:  # noqa: BLE001
        return "raised " + type(e).__name__

check = jax.jit(lambda x: eqx.error_if(x, x > 0, "x must be <= 0"))
term = diffrax.ODETerm(lambda t, y, args: -y)
user_solve = lambda: float(diffrax.diffeqsolve(term, diffrax.Tsit5(), 0.0, 10.0, 0.1, 1.0, max_steps=4).ys[-1])
out = {{"EQX_ON_ERROR": os.environ.get("EQX_ON_ERROR"), "eqx.error_if(1.0, 1.0 > 0)": attempt(lambda: float(check(1.0))),
       "diffeqsolve, max_steps=4, throw=True": attempt(user_solve)}}
"""

SOLVE = """
{mode}
import jax, numpy as np
import mdflow._solver.solve as _solve
problem = mdflow.sparse_gaussian(10, 30, 3)
out = {{"x64": bool(jax.config.jax_enable_x64), "data": str(problem.X.dtype)}}
try:  # what a solve says first; then, past any refusal, what it computes
    mdflow.solve(mdflow.make_flow("gf", problem, alpha=0.1), problem, mdflow.SolvePolicy(save="final"))
    out["first solve"] = "ran"
except mdflow.InputError as e:
    out["first solve"] = "InputError: " + str(e)[:60] + "..."
if hasattr(_solve, "require_x64"):
    _solve.require_x64 = lambda: None
for kind, params in (("gf", {{"alpha": 0.1}}), ("ssd", {{"alpha": 0.1, "eps": 0.1}})):
    for label, tol in (("default", {{}}), ("rtol=1e-5", {{"rtol": 1e-5, "atol": 1e-7}})):
        try:
            flow = mdflow.make_flow(kind, problem, **params)
            sol = mdflow.solve(flow, problem, mdflow.SolvePolicy(save="final", **tol))
            w = np.asarray(sol.w_final)
            out[f"{{kind}} {{label}}"] = {{
                "dtype": str(sol.w_final.dtype), "status": mdflow.status_name(sol.status),
                "steps": int(sol.num_steps), "t_end": float(sol.t_end),
                "final_rel_residual": float(sol.final_rel_residual), "w_final": w.astype(float).tolist()}}
        except Exception as e:  # noqa: BLE001
            out[f"{{kind}} {{label}}"] = {{"error": f"{{type(e).__name__}}: {{str(e).splitlines()[0][:200]}}"}}
"""


def run_case(template: str, mode: str, n: int, timeout: float) -> dict:
    code = "import os, json\nN = %d\n" % n + textwrap.dedent(template).format(mode=MODES[mode]) + "\nprint(json.dumps(out))\n"
    env = {k: v for k, v in os.environ.items() if k not in {"EQX_ON_ERROR", "JAX_ENABLE_X64"}}
    env.setdefault("JAX_PLATFORMS", "cpu")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout:g} s"}
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(title: str, rows: dict[str, dict]) -> str:
    keys = [k for k in next(iter(rows.values())) if k != "w_final"]
    lines = [f"\n{title}", "| | " + " | ".join(rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for key in keys:
        cells = [rows[mode].get(key, "") for mode in rows]
        lines.append(f"| {key} | " + " | ".join(f"{c:.6g}" if isinstance(c, float) else str(c) for c in cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="matmul size N (float32 case)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per case and mode")
    parser.add_argument("--json", help="write every result here")
    args = parser.parse_args()

    results = {case: {mode: run_case(template, mode, args.n, args.timeout) for mode in MODES}
               for case, template in (("float32", FLOAT32), ("errors", ERRORS), ("solve", SOLVE))}
    print(_table(f"A float32 program, N = {args.n}: before/after are arrays made before/after `import mdflow`",
                 results["float32"]))
    print(_table("The user's own equinox and diffrax checks (equinox imported after mdflow)", results["errors"]))
    solve = results["solve"]
    print("\nA first mdflow.solve: " + ", ".join(f"{m}: {solve[m].get('first solve')}" for m in MODES))
    for name in [k for k in solve["with"] if k not in {"x64", "data", "first solve"}]:
        ref = solve["with"][name.split()[0] + " default"]  # float64 at the default tolerances
        rows = {mode: dict(solve[mode].get(name, {})) for mode in MODES}
        for row in rows.values():
            if "w_final" in row and "w_final" in ref:
                import numpy as np

                w, w_ref = np.asarray(row["w_final"]), np.asarray(ref["w_final"])
                row["rel_error_vs_float64_default"] = float(np.linalg.norm(w - w_ref) / np.linalg.norm(w_ref))
                if "w_final" in solve["with"][name]:
                    row["bit_identical_to_with"] = bool(np.array_equal(w, np.asarray(solve["with"][name]["w_final"])))
        print(_table(f"mdflow.solve, {name} (the data: " + ", ".join(
            f"{solve[m].get('data')} {m}" for m in MODES) + ")", rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
