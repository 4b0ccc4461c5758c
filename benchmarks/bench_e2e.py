"""Time to result: whole processes, as a researcher runs them, against a scipy loop. Prints one table.

Each case runs `mdflow` as a new process twice on one cache directory: *cold* (the directory is empty)
and *warm* (the first process filled it; a new output folder, so nothing is resumed):

- `quickstart`: `mdflow run` with the built-in config (8 runs, n = 40, d = 200, figures on: drawn by a
  background process after the results are committed; the note column says when `figures.json`, the
  end-of-drawing marker, appeared, counted from the command's start);
- `sweep32`: `mdflow run` of 32 SSD runs on sparse_gaussian n = 100, d = 1000 (16 ε log-spaced in
  [1e-3, 10] × α ∈ {0.02, 0.2}), rtol 1e-8, atol 1e-10, stop at relative residual 1e-6,
  `save = "final"`, no figures; against `scipy`: a new process that loads the same X, y and solves the
  same 32 runs with `solve_ivp(LSODA)` in a loop (same tolerances, horizon and stop as a terminal
  event, the NumPy field of `bench_sweep.numpy_ssd`); mdflow's end points must match scipy's to 1e-5
  (relative ℓ2), else the benchmark fails;
- `check`: `mdflow check` of 14 small runs (n = 15, d = 60) with their duals.

The columns `compile_s` / `solve_s` are what the process recorded (`summary.json`, `sweep`; with duals,
the dual calls' `dual_compile_s` / `dual_solve_s` are added).

    .venv/bin/python benchmarks/bench_e2e.py            # all cases (a few minutes)
    .venv/bin/python benchmarks/bench_e2e.py --only sweep32 --skip-scipy
    .venv/bin/python benchmarks/bench_e2e.py --startup 3   # `mdflow check` start-up, per program

`--startup N` times `mdflow check` of the built-in quickstart N times cold (each on a new, empty cache
directory) and N times warm (on the last cold run's cache, a new output folder), each with the load
average before it and the process's CPU time (user + sys, less noisy than wall time on a shared
machine), and tables every program the last cold and warm processes built: the thread that built it
(the duals' programs are built in a worker thread while the primal compiles and solves), when its build
started (seconds after the process started), its trace, lowering and XLA compile (warm: the persistent
cache's load), from `jax.monitoring`, the wall seconds of its whole build, and the other functions and
eager operations compiled besides. Figures are drawn in a background process (not timed).

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


def timed_process(cmd: list[str], env: dict[str, str], *, figures: Path | None = None) -> tuple[float, float | None]:
    """Whole-process wall of `cmd`; with `figures`, also the seconds from its start until the background
    figure process wrote `figures/figures.json` (waited for, so the next case starts on an idle machine)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):  # `check` exits 1 when a pair is not equivalent; still a result
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    ready = None
    if figures is not None:
        marker = figures / "figures.json"
        while not marker.is_file():
            if time.perf_counter() - start > 300:
                sys.exit(f"{marker} did not appear within 300 s")
            time.sleep(0.02)
        ready = time.perf_counter() - start
        if json.loads(marker.read_text()).get("status") != "ok":
            sys.exit(f"figures failed: {marker.read_text()}")
    return wall, ready


def sweep_record(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())["sweep"]


def mdflow_case(name: str, args: list[str], work: Path, *, figures: bool = False) -> dict[str, tuple[float, dict, float | None]]:
    """Cold and warm whole-process walls (the recorded compile/solve seconds, and with `figures` when
    the background figures were ready) of one command."""
    env = dict(os.environ, MDFLOW_CACHE_DIR=str(work / f"cache-{name}"))
    env.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)  # the CLI's own setting
    result = {}
    for phase in ("cold", "warm"):
        out = work / f"{name}-{phase}"
        wall, ready = timed_process(MDFLOW + args + ["--out", str(out)], env,
                                    figures=out / "figures" if figures else None)
        result[phase] = (wall, sweep_record(out), ready)
    return result


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
    import jax

    jax.config.update("jax_enable_x64", True)  # the problem is generated here, in float64 as mdflow's

    import mdflow
    from mdflow._config import load

    config = load(work / "sweep32.toml")
    specs = config.run_specs()
    problem = config.problem(specs[0].seed)
    problem_npz, out_npz = work / "problem.npz", work / "scipy.npz"
    np.savez(problem_npz, X=np.asarray(problem.X), y=np.asarray(problem.y), scale=problem.scale,
             eps=[s.eps for s in specs], alpha=[s.alpha for s in specs])
    wall, _ = timed_process([sys.executable, __file__, "--scipy-child", str(problem_npz), str(out_npz), str(t1)],
                            dict(os.environ))
    with np.load(out_npz) as data:
        w_scipy = data["w"]
    with np.load(work / "sweep32-warm" / "trajectories.npz") as data:
        w_mdflow = data["w_final"]
    rel = np.linalg.norm(w_mdflow - w_scipy, axis=1) / np.linalg.norm(w_scipy, axis=1)
    assert mdflow.__version__  # the comparison used mdflow's own config expansion (same runs, same order)
    return wall, float(np.max(rel))


# A `mdflow check` process that also records, into the JSON file argv[1], what it compiled: each chunk
# program the executor built (its label, the thread that built it, when it started, how it got it, the
# seconds of each phase) and every other compile (`jax.monitoring` events), plus the seconds its imports
# took. The duals' programs are built in a worker thread (`prepare_pairs`), so events are attributed by
# thread.
STARTUP_CHILD = r"""
import json, os, sys, threading, time
start = time.perf_counter()
os.environ.setdefault("EQX_ON_ERROR", "nan")
import jax.monitoring
events, current = [], {}
jax.monitoring.register_event_duration_secs_listener(
    lambda event, secs, **kw: events.append((current.get(threading.get_ident()), event.rsplit("/", 1)[-1],
                                             kw.get("fun_name", ""), secs)))
from mdflow import cli
from mdflow._execution import executor, run
imported = time.perf_counter() - start
built, build, lock = [], executor.build_program, threading.Lock()

def label(args, static):
    member = args[0]
    mirror = member.mirror if type(member).__name__ == "DualFlow" else None
    what = type(member).__name__ + (f"[{type(mirror).__name__}]" if mirror is not None else "")
    rows = getattr(member, "track_identity", None)
    return what + (" + E3 rows" if rows else "") + f", {static['solver_name']}"

def timed(name, fn, args, static):
    thread = threading.current_thread().name
    with lock:
        k = len(built)
        built.append({"program": label(args, static), "thread": "main" if thread == "MainThread" else "worker",
                      "start_s": time.perf_counter() - start})
    current[threading.get_ident()] = k
    t0 = time.perf_counter()
    program = build(name, fn, args, static)
    built[k].update(build_s=time.perf_counter() - t0, source=program.source)
    current[threading.get_ident()] = None
    return program

executor.build_program = timed
code = cli.main(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    json.dump({"import_s": imported, "wall_s": time.perf_counter() - start, "programs": built, "events": events}, f)
sys.stdout.flush(); sys.stderr.flush()
os._exit(code)
"""


def startup(repeats: int, work: Path) -> None:
    """`--startup`: cold and warm `mdflow check` of the quickstart; prints the timings and program tables."""
    import resource

    rows, records = [], {}
    for phase in ("cold",) * repeats + ("warm",) * repeats:
        i = sum(r[0] == phase for r in rows)
        cache = work / f"cache-{i}" if phase == "cold" else work / f"cache-{repeats - 1}"
        env = dict(os.environ, MDFLOW_CACHE_DIR=str(cache))
        env.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)  # the CLI's own setting
        record, load = work / f"{phase}-{i}.json", os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", STARTUP_CHILD, str(record), "check", "--out",
                               str(work / f"out-{phase}-{i}")], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            sys.exit(f"mdflow check failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        records[phase] = json.loads(record.read_text())
        rows.append((phase, wall, cpu, load, records[phase]["import_s"]))
        print(f"done: {phase} {i + 1}/{repeats}", file=sys.stderr, flush=True)
    print("| `mdflow check` (quickstart) | whole process (s) | CPU user+sys (s) | load average before | imports (s) |")
    print("|---|---|---|---|---|")
    for phase, wall, cpu, load, imported in rows:
        print(f"| {phase} | {wall:.2f} | {cpu:.2f} | {load:.2f} | {imported:.2f} |")
    for phase, record in records.items():
        print(f"\nPrograms of the last {phase} process (seconds; XLA compile: from the persistent cache when warm):\n")
        print("| program | got | thread | starts at | trace | lower | XLA compile | build total |")
        print("|---|---|---|---|---|---|---|---|")
        phases = {"jaxpr_trace_duration": "trace", "jaxpr_to_mlir_module_duration": "lower",
                  "backend_compile_duration": "compile"}
        for k, prog in enumerate(record["programs"]):
            secs = {v: sum(e[3] for e in record["events"] if e[0] == k and e[1] == key and e[2] in ("_body", "jit(_body)"))
                    for key, v in phases.items()}  # the program's own events, not those of functions it traces
            print(f"| {prog['program']} | {prog['source']} | {prog['thread']} | {prog['start_s']:.2f} | "
                  f"{secs['trace']:.2f} | {secs['lower']:.2f} | {secs['compile']:.2f} | {prog['build_s']:.2f} |")
        others: dict[str, list[float]] = {}
        for owner, event, fun, secs in record["events"]:
            if owner is None and event == "backend_compile_duration":
                others.setdefault(fun, []).append(secs)
        big = {f: v for f, v in others.items() if f.startswith("jit(_")}  # named functions; else eager ops
        small = [x for f, v in others.items() if f not in big for x in v]
        for fun, v in sorted(big.items(), key=lambda kv: -sum(kv[1])):
            print(f"| {fun} (outside the executor) | | | | | | {sum(v):.2f} | |")
        print(f"| {len(small)} eager operations (outside the executor) | | | | | | {sum(small):.2f} | |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["quickstart", "sweep32", "check"], action="append")
    p.add_argument("--skip-scipy", action="store_true")
    p.add_argument("--t1", type=float, default=1e5, help="horizon of the sweep32 runs")
    p.add_argument("--scipy-child", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--startup", type=int, metavar="N", help="time `mdflow check` start-up instead, N cold + N warm")
    args = p.parse_args()
    if args.scipy_child:
        scipy_child(args.scipy_child[0], args.scipy_child[1], float(args.scipy_child[2]))
        return
    if args.startup:
        with tempfile.TemporaryDirectory(prefix="mdflow-bench-startup-") as tmp:
            startup(args.startup, Path(tmp))
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
            result = mdflow_case(name, commands[name], work, figures=name == "quickstart")
            for phase, (wall, rec, ready) in result.items():
                walls[(name, phase)] = wall
                note = "" if ready is None else f"figures ready at {ready:.2f} s"
                compile_s = rec.get("compile_s", 0.0) + rec.get("dual_compile_s", 0.0)
                solve_s = rec.get("solve_s", 0.0) + rec.get("dual_solve_s", 0.0)
                rows.append((f"`mdflow {' '.join(commands[name][:1])}` {name}, {phase}", wall, compile_s, solve_s, note))
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
