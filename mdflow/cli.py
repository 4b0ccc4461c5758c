"""The `mdflow` command line: solve flows on the diagonal network, check primal–dual equivalence, plot.

Bad input (config keys, data files, parameter values) ends with one line naming the problem and exit
code 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_NOT_EQUIVALENT = 1
EXIT_NOTHING_VERIFIED = 3  # `check`: no pair verified, a pair not solved, or an exact pair inconclusive
EXIT_FIGURES_FAILED = 4  # `plot`: a figure could not be drawn (one line; the traceback is in figures/figures.json)
EXIT_NO_COORDINATOR = 5  # a distributed job did not form within --init-timeout
VERIFIED = ("equivalent", "not_equivalent")


# OSErrors of the environment, not of mdflow: no space, over quota, read-only, not permitted.
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _setup_jax(job=None) -> None:
    """One host device per CPU core (a sweep runs one chunk per core; split between the processes of
    a one-machine distributed `job`), the `jax.distributed` job joined and x64 set before any array
    exists, and a persistent compilation cache for repeated CLI runs (`$MDFLOW_CACHE_DIR`, default
    `~/.cache/mdflow/jax`; empty: off): a later process loads its compiled solves instead of compiling
    them (they carry no host callbacks, see `mdflow/_errors.py`)."""
    from ._execution.distributed import initialize, local_device_count
    from ._execution.plan import use_cpu_cores

    flags = os.environ.get("XLA_FLAGS")
    use_cpu_cores(local_device_count(job))
    import jax

    if job is not None:
        initialize(job)
    jax.config.update("jax_enable_x64", True)
    try:
        jax.devices()  # XLA reads XLA_FLAGS once, when the backend starts ...
    finally:  # ... so restore them: child processes and in-process callers keep their own device count
        if flags is None:
            os.environ.pop("XLA_FLAGS", None)
        else:
            os.environ["XLA_FLAGS"] = flags
    from ._execution.programs import cache_problem, replace_damaged_compilation_entries

    cache = os.environ.get("MDFLOW_CACHE_DIR", str(Path.home() / ".cache" / "mdflow" / "jax"))
    why = cache_problem(cache) if cache else None
    if why:  # the caches are optional: a bad one never stops a run
        _log(f"warning: MDFLOW_CACHE_DIR={cache!r}: {why}; running uncached")
    elif cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # else JAX reads it
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        replace_damaged_compilation_entries()


def _load_config(path: str | None):
    from ._config import load, quickstart

    return quickstart() if path is None else load(path)


def _out_dir(config, out: str | None) -> Path:
    from ._errors import InputError

    out = config["output"]["dir"] if out is None else out
    if not out.strip():
        raise InputError(f"--out={out!r}: needs a folder name")
    return Path(out)


def _report_failed_figures(out: Path) -> None:
    """One line when the last (background) drawing of `out`'s figures failed: nothing else reports it."""
    from ._plotting.plot import failed_drawing

    line = failed_drawing(out)
    if line:
        _log(line)


def _writes() -> bool:
    """Whether this process writes the results (process 0 of a distributed job, or the only one)."""
    import jax

    return jax.process_index() == 0


def cmd_run(args) -> int:
    from ._execution.run import execute

    config = _load_config(args.config)
    out = _out_dir(config, args.out)
    _report_failed_figures(out)
    records, pairs = execute(config, out, log=_log, force=args.force)
    failed = [r for r in records if r["status"] != "ok"]
    if _writes():
        _log(f"wrote {out / 'summary.json'}, {out / 'trajectories.npz'}")  # figures: see execute's lines
    _log(f"{len(records) - len(failed)}/{len(records)} runs ok")
    if pairs:
        from ._analysis.equivalence import format_table

        print(format_table(pairs))
    return 1 if (failed and args.strict) else 0


def cmd_check(args) -> int:
    """Exit 0: every exact pair equivalent (true-SSD pairs may be `not_equivalent`: their dual is
    approximate); 1: some exact pair (GF, frozen SSD) not equivalent; 3: nothing verified (no pair
    `equivalent` or `not_equivalent`), a pair not solved, or an exact pair `inconclusive`."""
    from ._analysis.equivalence import SOLVED, format_table
    from ._errors import InputError
    from ._execution.run import execute

    config = _load_config(args.config)
    out = _out_dir(config, args.out)
    if config["output"]["save"] != "trajectories":
        raise InputError(f"output.save={config['output']['save']!r}: `mdflow check` compares primal and dual "
                         "trajectories; set output.save = \"trajectories\"")
    _report_failed_figures(out)
    _, pairs = execute(config, out, log=_log, duals=True, force=args.force)
    print(format_table(pairs))
    exact = [p for p in pairs if p["exact"]]
    failed = [p for p in exact if p["verdict"] == "not_equivalent"]
    undecided = [p for p in exact if p["verdict"] == "inconclusive"]
    verified = [p for p in pairs if p["verdict"] in VERIFIED]
    unsolved = [p for p in pairs if not {p["primal_status"], p["dual_status"], p["coarse_status"]} <= set(SOLVED)]
    _log((f"wrote {out / 'equivalence.json'}; " if _writes() else "")
         + f"{len(verified)} of {len(pairs)} pair(s) verified, {len(failed)} exact pair(s) not equivalent"
         + (f", {len(unsolved)} not solved" if unsolved else ""))
    for p in failed + undecided:
        on = f" on {p['model_label']}" if "model_label" in p else ""  # a config that compares several models
        _log(f"  {p['flow']}{on} eps={p['eps']} alpha={p['alpha']}: {p['verdict']}: {p['reason']}")
    if failed:
        return EXIT_NOT_EQUIVALENT
    if not verified or unsolved or undecided:
        verdicts = sorted({str(p["verdict"]) for p in pairs})
        what = ("nothing verified" if not verified else f"{len(unsolved)} pair(s) not solved" if unsolved
                else f"{len(undecided)} exact pair(s) inconclusive")
        _log(f"mdflow check: {what} (verdicts: {verdicts or 'no pairs'}); exit {EXIT_NOTHING_VERIFIED}")
        return EXIT_NOTHING_VERIFIED
    return 0


def cmd_plot(args) -> int:
    """Exit 0: every figure drawn; 4: a figure could not be drawn (one line; the traceback is in the
    marker `figures/figures.json`); 2: no readable committed result set."""
    from ._errors import InputError
    from ._plotting.plot import MARKER, plot_results

    out = Path(args.results)
    try:
        paths = plot_results(out)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - a figure bug: one line, the traceback is in the marker
        _log(f"mdflow plot: figures failed ({type(exc).__name__}: {exc}); traceback in "
             f"{out / 'figures' / MARKER}; exit {EXIT_FIGURES_FAILED}")
        return EXIT_FIGURES_FAILED
    _log(f"wrote {len(paths)} figure files under {out / 'figures'}")
    return 0


def cmd_info(args) -> int:
    from ._execution.run import versions

    for key, value in versions().items():
        print(f"{key:>10}: {value}")
    return 0


def _add_distributed_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group(
        "distributed", "join a jax.distributed job (all three flags; or, under SLURM srun, from the environment)")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0 (e.g. 127.0.0.1:12345)")
    group.add_argument("--num-processes", type=int, metavar="N", help="processes in the job")
    group.add_argument("--process-id", type=int, metavar="I", help="this process, 0..N-1 (0 writes the results)")
    group.add_argument("--init-timeout", type=int, default=300, metavar="S",
                       help="seconds to wait for every process to join (default 300)")


def _distributed_job(args):
    """The `jax.distributed` job of `run`/`check` (flags, else scheduler environment), or `None`."""
    from ._execution.distributed import job_from_flags

    if not hasattr(args, "coordinator"):
        return None
    return job_from_flags(args.coordinator, args.num_processes, args.process_id, init_timeout_s=args.init_timeout)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mdflow", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="A CONFIG is a TOML file (every key: docs/config.md); results go to output.dir, by default\n"
               "results/<config file stem>. Rerunning a config resumes from its stored chunks.\n"
               "Exit codes: 0 success; 1 `check` found an exact pair not equivalent, or `run --strict` had a\n"
               "failed run; 2 bad input (one line naming the key or file and the value), or a folder that\n"
               "cannot be written; 3 `check` verified nothing, or a pair was not solved, or an exact pair was\n"
               "inconclusive; 4 `plot` could not draw a figure; 5 a distributed job did not form within\n"
               "--init-timeout (coordinator not reached, or a process missing).\n"
               "Results in Python: mdflow.load(RESULTS_DIR). Tutorial: docs/tutorial.md.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="solve the runs of a config (built-in quickstart without one)",
        description="Solve every run of the config's grid (flows × seeds × ε × α) as a chunked sweep and "
                    "write summary.json, trajectories.npz and figures/ to the output folder. Finished "
                    "chunks are stored as they complete; rerunning resumes.")
    run.add_argument("config", nargs="?", help="TOML config (default: the built-in quickstart, see docs/config.md)")
    run.add_argument("--out", help="output folder (default: output.dir of the config, results/<config stem>)")
    run.add_argument("--strict", action="store_true", help="exit 1 if any run ended with a status other than ok")
    run.add_argument("--force", action="store_true",
                     help="discard the folder's stored chunks and recompute everything instead of resuming")
    _add_distributed_flags(run)
    run.set_defaults(func=cmd_run)
    check = sub.add_parser(
        "check", help="solve primal runs and their duals; check equivalence (docs/math.md §4)",
        description="Solve each primal run and its mirror-descent dual, compare the trajectories and print "
                    "one row per pair (gaps at two tolerances 100x apart, their factor, identity, delta, verdict; "
                    "a legend under the table, more in docs/analyses.md). Writes equivalence.json too. Exit 1 "
                    "if an exact pair (GF, frozen SSD) is not equivalent.")
    check.add_argument("config", nargs="?", help="TOML config (default: the built-in quickstart)")
    check.add_argument("--out", help="output folder (default: output.dir of the config, results/<config stem>)")
    check.add_argument("--force", action="store_true",
                       help="discard the folder's stored chunks and recompute everything instead of resuming")
    _add_distributed_flags(check)
    check.set_defaults(func=cmd_check)
    plot = sub.add_parser(
        "plot", help="regenerate every figure of a results folder (never solves)",
        description="Redraw the run figures and whichever of F1–F8 the folder supports into "
                    "RESULTS_DIR/figures/ (PDF + PNG), from the stored files alone (docs/figures.md). "
                    f"Exit 0: drawn; {EXIT_FIGURES_FAILED}: a figure could not be drawn (one line on stderr; the "
                    "traceback is in RESULTS_DIR/figures/figures.json); 2: no readable result set there. "
                    "A failed background drawing is reported by the next `mdflow run` or `check` on the folder.")
    plot.add_argument("results", metavar="RESULTS_DIR", help="a results folder written by `mdflow run` or `mdflow check`")
    plot.set_defaults(func=cmd_plot)
    info = sub.add_parser("info", help="print versions, devices and whether float64 is on",
                          description="Print the versions, devices and x64 setting that results record.")
    info.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from ._errors import InputError
    from ._execution.distributed import CoordinatorError

    try:
        job = _distributed_job(args)
        _setup_jax(job)
    except InputError as exc:
        _log(f"mdflow {args.command}: error: {exc}")
        return EXIT_BAD_INPUT
    except CoordinatorError as exc:
        _log(f"mdflow {args.command}: error: {exc}")
        return EXIT_NO_COORDINATOR

    warnings.showwarning = lambda message, category, *rest, **kw: _log(f"warning: {message}")
    try:
        return args.func(args)
    except InputError as exc:
        _log(f"mdflow {args.command}: error: {exc}")
        return EXIT_BAD_INPUT
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS:
            raise
        # A full disk, a read-only or forbidden folder met while writing (the guards passed): results
        # are written atomically, so what was stored before is intact and a rerun resumes.
        where = f" {exc.filename!r}" if exc.filename else ""
        _log(f"mdflow {args.command}: error: cannot write{where} ({exc.strerror}); what was stored is intact: "
             "free space or choose another --out, then rerun to resume")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _log("interrupted")
        return 130


def entry() -> None:
    """The `mdflow` command: `main`, then a prompt exit.

    Why: tearing the interpreter down after a command (freeing JAX's compiled programs, device buffers
    and thread pools) took a large share of a warm command's time, after every result was written. By the
    time `main` returns, every file is written, closed and renamed into place, so a single-process
    command flushes its output and leaves with `os._exit`. A multi-process job exits normally (its
    `jax.distributed` client shuts down), and so does an exception (its traceback is printed).

    The command's own process also gets `EQX_ON_ERROR=nan` (unless its environment sets it), before
    equinox is imported: its solves then carry no host callbacks and are persistently cached
    (`_errors.py`)."""
    os.environ.setdefault("EQX_ON_ERROR", "nan")
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    jax = sys.modules.get("jax")
    if jax is not None and jax.process_count() > 1:
        sys.exit(code)
    os._exit(int(code or 0))


if __name__ == "__main__":
    entry()
