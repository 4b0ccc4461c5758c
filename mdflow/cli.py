"""The `mdflow` command line: solve flows on the diagonal network, check primal–dual equivalence, plot.

Bad input (config keys, data files, parameter values) ends with one line naming the problem and exit
code 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

EXIT_BAD_INPUT = 2


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _setup_jax() -> None:
    """One host device per CPU core (a sweep runs one chunk per core), x64 before any array exists,
    and a persistent compilation cache for repeated CLI runs."""
    from ._sweep import use_cpu_cores

    use_cpu_cores()
    import jax

    jax.config.update("jax_enable_x64", True)
    cache = os.environ.get("MDFLOW_CACHE_DIR", str(Path.home() / ".cache" / "mdflow" / "jax"))
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _load_config(path: str | None):
    from ._config import load, quickstart

    return quickstart() if path is None else load(path)


def _out_dir(config, out: str | None) -> Path:
    return Path(out) if out is not None else Path(config["output"]["dir"])


def cmd_run(args) -> int:
    from ._run import execute

    config = _load_config(args.config)
    out = _out_dir(config, args.out)
    _log(f"mdflow run: {config.source}, {len(config.run_specs())} runs -> {out}")
    records, pairs = execute(config, out, log=_log, force=args.force)
    failed = [r for r in records if r["status"] != "ok"]
    _log(f"wrote {out / 'summary.json'}, {out / 'trajectories.npz'}" + (", figures/" if config["output"]["figures"] else ""))
    _log(f"{len(records) - len(failed)}/{len(records)} runs ok")
    if pairs:
        from ._equivalence import format_table

        print(format_table(pairs))
    return 1 if (failed and args.strict) else 0


def cmd_check(args) -> int:
    from ._equivalence import format_table
    from ._run import execute

    config = _load_config(args.config)
    out = _out_dir(config, args.out)
    _log(f"mdflow check: {config.source}, {len(config.run_specs())} primal runs + duals -> {out}")
    _, pairs = execute(config, out, log=_log, duals=True, force=args.force)
    print(format_table(pairs))
    failed = [p for p in pairs if p["verdict"] == "not_equivalent"]
    _log(f"wrote {out / 'equivalence.json'}; {len(failed)} exact pair(s) not equivalent")
    return 1 if failed else 0


def cmd_plot(args) -> int:
    from ._errors import InputError
    from ._plot import plot_all

    out = Path(args.results)
    if not (out / "summary.json").is_file():
        raise InputError(f"results={str(out)!r}: no summary.json there (run `mdflow run` first)")
    paths = plot_all(out)
    _log(f"wrote {len(paths)} figure files under {out / 'figures'}")
    return 0


def cmd_info(args) -> int:
    from ._run import versions

    for key, value in versions().items():
        print(f"{key:>10}: {value}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mdflow", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="A CONFIG is a TOML file (every key: docs/config.md); results go to output.dir, by default\n"
               "results/<config file stem>. Rerunning a config resumes from its stored chunks.\n"
               "Exit codes: 0 success; 1 `check` found an exact pair not equivalent, or `run --strict` had a\n"
               "failed run; 2 bad input (one line naming the key or file and the value).\n"
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
    run.set_defaults(func=cmd_run)
    check = sub.add_parser(
        "check", help="solve primal runs and their duals; check equivalence (docs/math.md §4)",
        description="Solve each primal run and its mirror-descent dual, compare the trajectories and print "
                    "one row per pair (gap_w, gap_dual, identity, delta, verdict; columns explained in "
                    "docs/analyses.md). Writes equivalence.json too. Exit 1 if an exact pair (GF, frozen "
                    "SSD) is not equivalent within check.tolerance.")
    check.add_argument("config", nargs="?", help="TOML config (default: the built-in quickstart)")
    check.add_argument("--out", help="output folder (default: output.dir of the config, results/<config stem>)")
    check.add_argument("--force", action="store_true",
                       help="discard the folder's stored chunks and recompute everything instead of resuming")
    check.set_defaults(func=cmd_check)
    plot = sub.add_parser(
        "plot", help="regenerate every figure of a results folder (never solves)",
        description="Redraw the run figures and whichever of F1–F6 the folder supports into "
                    "RESULTS_DIR/figures/ (PDF + PNG), from the stored files alone (docs/figures.md).")
    plot.add_argument("results", metavar="RESULTS_DIR", help="a results folder written by `mdflow run` or `mdflow check`")
    plot.set_defaults(func=cmd_plot)
    info = sub.add_parser("info", help="print versions, devices and whether float64 is on",
                          description="Print the versions, devices and x64 setting that results record.")
    info.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _setup_jax()
    from ._errors import InputError

    warnings.showwarning = lambda message, category, *rest, **kw: _log(f"warning: {message}")
    try:
        return args.func(args)
    except InputError as exc:
        _log(f"mdflow {args.command}: error: {exc}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _log("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
