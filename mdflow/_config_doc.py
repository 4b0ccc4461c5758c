"""The config reference (`docs/config.md`), generated from `SCHEMA` so that it cannot drift from it.

Types and defaults come from the schema; each key's description is its `Key.doc` or, where that is
empty, its entry in `DESCRIPTIONS` — exactly one of the two (a test checks it), so every key is
described once. Regenerate with `python -m mdflow._config_doc > docs/config.md`.
"""

from __future__ import annotations

import json

from ._config import END_POINT_STOP, MAX_DISCRETE_STEPS, SCHEMA
from ._errors import RANGES
from ._solver.policy import SOLVER_NAMES

TABLES = {
    "problem": "The data and the loss ([math.md](math.md) §1, §9).",
    "model": "The parametrization `w(θ)` the flows run on ([math.md](math.md) §9): one model, or several to "
             "compare in one sweep (lists below). With several, every run of the grid is made on each model, in "
             "the order of `model.parametrization` (the diagonal network at each `model.depth`); a run's key "
             "ends in `|model=<label>`, its record carries `model_label` and `mdflow.load` indexes by `model`. "
             "The labels: `\"linear\"`, `\"diagonal-D<depth>\"` (e.g. `\"diagonal-D2\"`). A list of one "
             "value is that value.",
    "flows": "Which primal flows to solve, and whether to pair each run with its dual ([math.md](math.md) §2–§4). "
             "An entry of `flows.kinds` may also be a plugin, the import path `\"package.module:ClassName\"` of "
             "a subclass of `mdflow.AbstractPrimalFlow` ([api.md](api.md#your-own-flow)); its own `axes` are "
             "grid keys.",
    "grid": "The swept axes. Each axis is a number, a list, or a range table "
            "`{ start, stop, num, spacing = \"log\" | \"linear\" }`. Each flow takes the axes of its "
            "parameters: GF α; SSD ε, α; frozen SSD also `a`; Adam ε, α, τ1, τ2; RMSProp ε, α, τ2; every flow "
            "the weight decay λ; a plugin flow its `axes` (a grid key no flow of `flows.kinds` takes is an "
            "error).",
    "solve": "The ODE solver and the saved time grid ([solvers.md](solvers.md)).",
    "sweep": "How runs are batched onto devices ([sweeps.md](sweeps.md)).",
    "analysis": "Per-run analyses added to each record ([analyses.md](analyses.md)).",
    "check": "Thresholds of the primal–dual check ([analyses.md](analyses.md#primaldual-check)).",
    "output": "Where and what to write.",
}

DESCRIPTIONS = {
    "problem.kind": "`\"sparse_gaussian\"` (generated regression data, §1), `\"separable_gaussian\"` "
                    "(generated classification data: labels `y = sign(Xw* + noise·z)` in ±1 of a k-sparse "
                    "teacher `w*`, `mdflow.separable_gaussian`) or `\"file\"` (arrays `X (n, d)`, `y (n,)`, "
                    "optional `w_star (d,)` in the `.npz` at `problem.path`)",
    "problem.loss": "`\"squared\"` (regression, stopped at `solve.stop_rel_residual`), `\"logistic\"` or "
                    "`\"exponential\"` (classification: labels ±1, checked when the data are made or read; "
                    "stopped at `solve.stop_loss`, with `solve.stop_rel_residual` an error; "
                    "`problem.kind = \"sparse_gaussian\"` is an error, its labels are real). `analysis.kkt` "
                    "with a classification loss is refused before any work rather than recorded as skipped: "
                    "the KKT conditions of interpolation apply to no run of such a config",
    "problem.n": "number of samples (rows of X)",
    "problem.d": "dimension (columns of X); over-parameterized when d > n",
    "problem.k": "nonzeros of the planted `w*` (≤ d)",
    "problem.noise": "standard deviation of Gaussian noise added to `y = Xw*`",
    "problem.seed": "seed of the generated problem (overridden per run by `grid.seed`)",
    "problem.normalization": "`\"mean\"`: L = ‖Xw − y‖²/(2n); `\"sum\"`: L = ‖Xw − y‖²/2",
    "model.parametrization": "`\"diagonal\"` (`w = u^D − v^D`, `u(0) = v(0) = α`) or `\"linear\"` "
                             "(`w = θ`, `θ(0) = α ≥ 0`), or a list of distinct ones (`[\"linear\", "
                             "\"diagonal\"]`): a sweep on each",
    "model.depth": "the diagonal network's depth D ≥ 2 (one compiled program per depth), or a list of distinct "
                   "depths (one diagonal network each); the linear model has depth 1 (left unset, it is 1; a "
                   "depth list with only `\"linear\"` is an error)",
    "flows.kinds": "primal flows to solve: any of `\"gf\"`, `\"ssd\"`, `\"ssd_frozen\"` (§2), `\"adam\"`, "
                   "`\"rmsprop\"` (§8), or a plugin's import path `\"package.module:ClassName\"`. With "
                   "`flows.duals` (and `mdflow check`) each (flow, model, loss, weight decay) must have a "
                   "dual, else the config is refused naming why (`flow.why_no_dual`)",
    "flows.dual_form": "dual ODE: `\"rho\"` (n-dimensional) or `\"theta\"` (d-dimensional) (§3)",
    "grid.eps": "stability constants ε > 0 of SSD, frozen SSD, Adam and RMSProp",
    "grid.alpha": "initialization scales α (`u(0) = v(0) = α` on the diagonal network: α > 0; `θ(0) = α` "
                  "on the linear model: α ≥ 0, `RANGES[\"grid.alpha_linear\"]`); with several models, in "
                  "the range of each",
    "grid.weight_decay": "decoupled weight decay λ ≥ 0 of every flow (`θ̇ = −update − λθ`, as AdamW); a run "
                         "axis: every record carries it, `mdflow.load` indexes by it where it is swept",
    "solve.solver": "`\"auto\"` (= `\"tsit5_rodas4\"`: Tsit5, switching to Rodas4 while stiff; in vmapped "
                    "chunks `\"tsit5_rodas4_shared\"`, the mode shared by the chunk, "
                    "[accelerators.md](accelerators.md)) or one of {solvers} ([solvers.md](solvers.md))",
    "solve.rtol": "relative tolerance of the step-size controller; unset: 1e-8, or 1e-10 where runs are "
                  "checked against their duals (`mdflow check`, `flows.duals`)",
    "solve.atol": "absolute tolerance of the step-size controller; unset: 1e-10, or 1e-12 where runs are "
                  "checked against their duals",
    "solve.t1": "end of the time horizon",
    "solve.num_ts": "saved times: t = 0 plus `num_ts − 1` log-spaced points on [t_min, t1]",
    "solve.t_min": "first positive saved time; default `t1·1e-7`",
    "solve.max_steps": "step budget per run; a run that exhausts it gets status `max_steps`",
    "solve.stop_loss": "a classification run (logistic, exponential loss) stops when its loss falls below "
                       "this (a run that reaches t1 first is `not_interpolated`); unset: never. An error with "
                       "the squared loss",
    "solve.pcoeff": "proportional coefficient of the PID step-size controller",
    "solve.icoeff": "integral coefficient of the PID step-size controller",
    "sweep.chunk_size": "runs per chunk: the unit of batching, progress and storage",
    "analysis.kkt": "KKT errors against three potentials, the §5 error E, distances to the "
                    "min-ℓ1/ℓ3/2/ℓ2 interpolators and to w*",
    "analysis.stages": "measured stage boundaries of SSD runs against the §6 predictions",
    "analysis.discrete": "optax Adam(b1 = b2 = 0) against the SSD flow (§7)",
    "analysis.discrete_etas": "step sizes η of the Adam-vs-flow comparison; at most "
                              f"{MAX_DISCRETE_STEPS:.0e} optimizer steps per run on its horizon (Σ discrete_t1/η), "
                              "and for Adam/RMSProp every η ≤ τ1, τ2",
    "check.tolerance": "verdict threshold on the maximal relative w-gap of the exact pairs (E1, E2)",
    "check.floor": "denominators of relative gaps are max(‖·‖, floor) (w(0) = 0)",
    "output.save": "`\"trajectories\"` (w on the whole time grid) or `\"final\"` (end points only)",
    "output.figures": "when to draw the figures, always after the results are committed: `true` in a "
                      "background process (the command returns at once; `figures/figures.json` appears "
                      "when they are done), `\"inline\"` before the command returns, `false` never "
                      "(`mdflow plot` redraws them any time)",
}


def describe(table: str, key: str) -> str:
    """The one description of `table.key`: the schema's `doc`, else `DESCRIPTIONS`."""
    text = SCHEMA[table][key].doc or DESCRIPTIONS[f"{table}.{key}"]
    return text.replace("{solvers}", ", ".join(f"`\"{name}\"`" for name in SOLVER_NAMES))


def _types(types: tuple[type, ...]) -> str:
    names = ["number" if t is float else t.__name__ for t in types if t is not int or float not in types]
    return " or ".join(names)


def _default(table: str, key: str) -> str:
    value = SCHEMA[table][key].default
    if value is None:
        return "unset"
    if table == "solve" and key == "stop_rel_residual":
        return f"unset ({END_POINT_STOP:g} or off, see description)"
    return f"`{json.dumps(value)}`"


def config_reference() -> str:
    """The markdown text of `docs/config.md`."""
    lines = [
        "# Config reference",
        "",
        "<!-- Generated from mdflow/_config.py (SCHEMA) by `python -m mdflow._config_doc > docs/config.md`;",
        "     do not edit by hand (tests/test_docs.py checks that it is current). -->",
        "",
        "A config is a TOML file with the tables below. Every key is optional; unknown tables and keys",
        "are errors, and a bad value stops `mdflow` before any work with one line naming the key and the",
        "value (exit code 2). Every number has a range (`[lo, hi]`; `(`, `)` for open ends), the same for",
        "the Python API argument it sets (`SolvePolicy`, `make_flow`, `sparse_gaussian`). Without a",
        "config, `mdflow run` uses the built-in quickstart (`mdflow._config.QUICKSTART`). A config file's",
        "results go to `results/<file stem>` unless `output.dir` says otherwise.",
        "",
    ]
    for table, keys in SCHEMA.items():
        lines += [f"## [{table}]", "", TABLES[table], "", "| key | type | default | range | meaning |",
                  "|---|---|---|---|---|"]
        for key, spec in keys.items():
            types = _types(spec.types)
            meaning = describe(table, key).replace("|", "\\|")
            limits = RANGES.get(f"{table}.{key}")
            limits = "" if limits is None else f"`{limits!r}`"
            lines.append(f"| `{table}.{key}` | {types} | {_default(table, key)} | {limits} | {meaning} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_reference(), end="")
