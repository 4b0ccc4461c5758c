"""Time to result: whole processes, as a researcher runs them, against a scipy loop. Prints one table.

Each case runs `mdflow` as a new process twice on one cache directory: *cold* (the directory is empty)
and *warm* (the first process filled it; a new output folder, so nothing is resumed):

- `quickstart`: `mdflow run` with the built-in config (8 runs, n = 40, d = 200, figures on: drawn in
  the background after the results are committed; the next process waits for them, untimed);
- `sweep32`: `mdflow run` of 32 SSD runs on sparse_gaussian n = 100, d = 1000 (16 ε log-spaced in
  [1e-3, 10] × α ∈ {0.02, 0.2}), rtol 1e-8, atol 1e-10, stop at relative residual 1e-6,
  `save = "final"`, no figures; against `scipy`: a new process that loads the same X, y and solves the
  same 32 runs with `solve_ivp(LSODA)` in a loop (same tolerances, horizon and stop as a terminal
  event, the NumPy field of `bench_sweep.numpy_ssd`); mdflow's end points must match scipy's to 1e-5
  (relative ℓ2), else the benchmark fails;
- `check`: `mdflow check` of 14 small runs (n = 15, d = 60) with their duals.

The columns `compile_s` / `solve_s` are what the process recorded (`summary.json`, `sweep`).

    .venv/bin/python benchmarks/bench_e2e.py            # all cases (a few minutes)
    .venv/bin/python benchmarks/bench_e2e.py --only sweep32 --skip-scipy

Whole-process times depend on the machine's load: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MDFLOW = [sys.executable, "-m", "mdflow.cli"]

SWEEP32 = """
[problem]
n = 100
d = 1000
k = 5
seed = 0
[flows]
kinds = ["ssd"]
[grid]
eps = {{ start = 1e-3, stop = 10.0, num = 16, spacing = "log" }}
alpha = [0.02, 0.2]
[solve]
rtol = 1e-8
atol = 1e-10
t1 = {t1}
stop_rel_residual = 1e-6
[output]
save = "final"
figures = false
"""

CHECK = """
[problem]
n = 15
d = 60
k = 3
[flows]
kinds = ["gf", "ssd"]
[grid]
eps = [0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
alpha = [0.05, 0.2]
[solve]
t1 = 1000.0
num_ts = 50
[output]
figures = false
"""


def timed_process(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):  # `check` exits 1 when a pair is not equivalent; still a result
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall


def sweep_record(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())["sweep"]


def mdflow_case(name: str, args: list[str], work: Path) -> dict[str, tuple[float, dict]]:
    """Cold and warm whole-process walls (and the recorded compile/solve seconds) of one command."""
    env = dict(os.environ, MDFLOW_CACHE_DIR=str(work / f"cache-{name}"))
    env.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)  # the CLI's own setting
    result = {}
    for phase in ("cold", "warm"):
        out = work / f"{name}-{phase}"
        wall = timed_process(MDFLOW + args + ["--out", str(out)], env)
        result[phase] = (wall, sweep_record(out))
        wait_for_figures(out)
    return result


def wait_for_figures(out: Path, timeout_s: float = 300.0) -> None:
    """Let a background figure drawing (`output.figures = true`) finish before the next timed process,
    so it does not compete with it; its marker is written last."""
    if not (out / "figures" / "figures.log").exists():  # no drawing was started
        return
    deadline = time.perf_counter() + timeout_s
    while not (out / "figures" / "figures.json").exists() and time.perf_counter() < deadline:
        time.sleep(0.1)


def scipy_child(problem_npz: str, out_npz: str, t1: float) -> None:
    """The scipy loop (run as its own process): 32 SSD runs with LSODA, end weights saved."""
    sys.path.insert(0, str(HERE))
    from types import SimpleNamespace

    from bench_sweep import scipy_run

    with np.load(problem_npz) as data:
        problem = SimpleNamespace(X=data["X"], y=data["y"], scale=float(data["scale"]), d=data["X"].shape[1])
        eps, alpha = data["eps"], data["alpha"]
    opts = SimpleNamespace(t1=t1, rtol=1e-8, atol=1e-10, stop=1e-6)
    ws = [scipy_run(problem, float(e), float(a), opts)[1] for e, a in zip(eps, alpha)]
    np.savez(out_npz, w=np.stack(ws))


def scipy_case(work: Path, t1: float) -> tuple[float, float]:
    """Whole-process wall of the scipy loop, and the worst relative end-point difference to mdflow."""
    import mdflow
    from mdflow._config import load

    config = load(work / "sweep32.toml")
    specs = config.run_specs()
    problem = config.problem(specs[0].seed)
    problem_npz, out_npz = work / "problem.npz", work / "scipy.npz"
    np.savez(problem_npz, X=np.asarray(problem.X), y=np.asarray(problem.y), scale=problem.scale,
             eps=[s.eps for s in specs], alpha=[s.alpha for s in specs])
    wall = timed_process([sys.executable, __file__, "--scipy-child", str(problem_npz), str(out_npz), str(t1)],
                         dict(os.environ))
    with np.load(out_npz) as data:
        w_scipy = data["w"]
    with np.load(work / "sweep32-warm" / "trajectories.npz") as data:
        w_mdflow = data["w_final"]
    rel = np.linalg.norm(w_mdflow - w_scipy, axis=1) / np.linalg.norm(w_scipy, axis=1)
    assert mdflow.__version__  # the comparison used mdflow's own config expansion (same runs, same order)
    return wall, float(np.max(rel))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["quickstart", "sweep32", "check"], action="append")
    p.add_argument("--skip-scipy", action="store_true")
    p.add_argument("--t1", type=float, default=1e5, help="horizon of the sweep32 runs")
    p.add_argument("--scipy-child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.scipy_child:
        scipy_child(args.scipy_child[0], args.scipy_child[1], float(args.scipy_child[2]))
        return
    cases = args.only or ["quickstart", "sweep32", "check"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="mdflow-bench-e2e-") as tmp:
        work = Path(tmp)
        (work / "sweep32.toml").write_text(SWEEP32.format(t1=args.t1))
        (work / "check.toml").write_text(CHECK)
        commands = {"quickstart": ["run"], "sweep32": ["run", str(work / "sweep32.toml")],
                    "check": ["check", str(work / "check.toml")]}
        walls = {}
        for name in cases:
            result = mdflow_case(name, commands[name], work)
            for phase, (wall, rec) in result.items():
                walls[(name, phase)] = wall
                rows.append((f"`mdflow {' '.join(commands[name][:1])}` {name}, {phase}", wall,
                             rec.get("compile_s"), rec.get("solve_s"), ""))
            print(f"done: {name}", file=sys.stderr, flush=True)
        if "sweep32" in cases and not args.skip_scipy:
            wall, rel = scipy_case(work, args.t1)
            ratio = "scipy / mdflow: " + ", ".join(f"{ph} {wall / walls[('sweep32', ph)]:.2f}" for ph in ("cold", "warm"))
            rows.append(("scipy solve_ivp(LSODA) loop, same 32 runs", wall, None, None,
                         f"{ratio}; max rel. end-point diff {rel:.1e}"))
            if not rel <= 1e-5:
                print("\n".join(_table(rows)))
                sys.exit(f"end points differ from scipy's: max relative difference {rel:.2e} > 1e-5")
    print("\n".join(_table(rows)))


def _table(rows) -> list[str]:
    fmt = lambda x: "" if x is None else f"{x:.2f}"  # noqa: E731
    lines = ["| what | whole process (s) | compile_s | solve_s | note |", "|---|---|---|---|---|"]
    lines += [f"| {what} | {wall:.2f} | {fmt(c)} | {fmt(s)} | {note} |" for what, wall, c, s, note in rows]
    return lines


if __name__ == "__main__":
    main()
