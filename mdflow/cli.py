"""The `mdflow` command line: `run`, `check`, `plot`, `info`.

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
    and a persistent compilation cache for repeated CLI runs (`$MDFLOW_CACHE_DIR`, default
    `~/.cache/mdflow/jax`; empty: off): a later process loads its compiled solves instead of compiling
    them (they carry no host callbacks, see `mdflow/_errors.py`)."""
    from ._sweep import use_cpu_cores

    use_cpu_cores()
    import jax

    jax.config.update("jax_enable_x64", True)
    cache = os.environ.get("MDFLOW_CACHE_DIR", str(Path.home() / ".cache" / "mdflow" / "jax"))
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # else JAX reads it
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
    p = argparse.ArgumentParser(prog="mdflow", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="solve the runs of a config (built-in quickstart without one)")
    run.add_argument("config", nargs="?", help="TOML config (default: built-in quickstart)")
    run.add_argument("--out", help="output folder (default: output.dir of the config)")
    run.add_argument("--strict", action="store_true", help="exit 1 if any run failed")
    run.add_argument("--force", action="store_true", help="recompute stored chunks instead of resuming")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="solve primal runs and their duals; check equivalence (§4)")
    check.add_argument("config", nargs="?", help="TOML config (default: built-in quickstart)")
    check.add_argument("--out", help="output folder (default: output.dir of the config)")
    check.add_argument("--force", action="store_true", help="recompute stored chunks instead of resuming")
    check.set_defaults(func=cmd_check)
    plot = sub.add_parser("plot", help="regenerate every figure of a results folder (never solves)")
    plot.add_argument("results", help="a results folder written by `mdflow run`")
    plot.set_defaults(func=cmd_plot)
    info = sub.add_parser("info", help="versions, devices, x64")
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
