"""How many programs `mdflow run` compiles with every analysis on, and how many a second run adds that
changes only what should never recompile (the discrete comparison's step sizes and horizon).

    python benchmarks/count_programs.py

Each run is a new `mdflow run` process on one fresh compilation cache; a program is an entry of that
cache (every compile is stored: `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0`). Prints the counts, the
solve programs (`_solve`, `_body`) apart, and what the second run added.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIG = """
[problem]
n = 10
d = 30
k = 3
[flows]
kinds = ["gf", "ssd"]
[grid]
eps = [0.1, 1.0]
alpha = [0.1]
[solve]
solver = "tsit5"
t1 = 1e4
num_ts = 50
[analysis]
kkt = true
stages = true
discrete = true
discrete_etas = {etas}
discrete_t1 = {t1}
[output]
figures = false
"""
SOLVE = re.compile(r"^jit__(solve|solve_batch|body)$")


def programs(cache: Path) -> collections.Counter:
    names = [re.sub(r"-[0-9a-f]+-cache$", "", p.name) for p in cache.glob("*-cache")]
    return collections.Counter(names)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "MDFLOW_CACHE_DIR": str(tmp / "cache"), "JAX_COMPILATION_CACHE_DIR": str(tmp / "cache"),
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
        counts = []
        for i, (etas, t1) in enumerate((("[0.02, 0.01]", 1.0), ("[0.05, 0.025]", 2.0))):
            cfg = tmp / f"run{i}.toml"
            cfg.write_text(CONFIG.format(etas=etas, t1=t1))
            subprocess.run([sys.executable, "-m", "mdflow.cli", "run", str(cfg), "--out", str(tmp / f"out{i}")],
                           env=env, check=True, capture_output=True)
            counts.append(programs(tmp / "cache"))
        first, both = counts
        solve = sum(n for name, n in first.items() if SOLVE.match(name))
        print(f"first run (kkt, stages, discrete etas [0.02, 0.01], t1 = 1): {sum(first.values())} programs, "
              f"{solve} of them solve programs")
        added = both - first
        print(f"second run (discrete etas [0.05, 0.025], t1 = 2): {sum(added.values())} more"
              + (f": {dict(added)}" if added else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
