"""TOML configs: schema, defaults, grid expansion, and errors that name the offending key.

A config has the tables `[problem]`, `[model]`, `[flows]`, `[grid]`, `[solve]`, `[sweep]`,
`[analysis]`, `[check]` and `[output]`. Every key is optional (see `SCHEMA` for defaults); unknown keys and wrong
types are `InputError`s of the form `problem.n=-3: must be >= 1`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import tomllib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._errors import RANGES, InputError, Range, short_repr
from ._io import json_hash
from ._solver.policy import SolvePolicy, check_solver

if TYPE_CHECKING:
    from ._model import AbstractModel

_REQUIRED = object()

# `output.figures`: drawn by a detached child process after the results are committed (true), in the
# process itself after the commit ("inline"), or not at all (false).
FIGURE_MODES = (True, "inline", False)


@dataclasses.dataclass(frozen=True)
class Key:
    """One config key: accepted Python types, default, and an optional extra check."""

    types: tuple[type, ...]
    default: Any
    check: Any = None  # callable(value) -> error message or None
    doc: str = ""


def _range(name):
    """The config check of a numeric key: its range in `RANGES` (shared with the API argument it sets)."""
    return RANGES[name].problem


def _one_of(*choices):
    return lambda v: None if v in choices else f"expected one of {list(choices)}"


_NUM = (int, float)
_GRID = (list, dict, int, float)

# Grid ceilings: a range of more values, or a sweep of more runs, is almost surely a typo (`num = 2e8`).
MAX_AXIS_VALUES = 10_000
MAX_RUNS = 100_000

# The stop tolerance a config gets when it does not set one but only end points matter (see `Config.stop_rel_residual`).
END_POINT_STOP = 1e-8
# Step-size tolerances (rtol, atol) when the config leaves them unset: a run's, and a checked run's
# (`mdflow check`, `flows.duals`): its verdict needs the exact pairs' gaps far below `check.tolerance`
# at the finer of its two solves (the coarser one is 100x looser, see `pair_record`).
RUN_TOLERANCES = (1e-8, 1e-10)
CHECK_TOLERANCES = (1e-10, 1e-12)


def _loss_name(v):
    from ._problem import LOSSES

    return _one_of(*LOSSES)(v)


def _parametrization(v):
    from ._model import PARAMETRIZATIONS

    return _one_of(*PARAMETRIZATIONS)(v)


# Keys added after result stores existed: left out of `Config.hash` while at their defaults (which
# compute what configs without them computed), so those stores keep their identity.
ADDED_KEYS = (("problem", "loss"), ("model", "parametrization"), ("model", "depth"), ("grid", "weight_decay"),
              ("solve", "stop_loss"))

# Grid axes a plugin flow may declare without a range in `RANGES`: any finite number (the flow's own
# `__check_init__` validates it).
ANY_NUMBER = Range(why="a plugin flow's own axis")


def axis_range(name: str) -> Range:
    """The range of grid axis `name` (e.g. `grid.eps`): its entry in `RANGES`, or any finite number for a
    plugin flow's own axis."""
    return RANGES.get(name, ANY_NUMBER)


def _stop_value(v):
    if v is False:
        return None
    if v is True:
        return f"expected a number in {RANGES['solve.stop_rel_residual']!r} or false"
    return RANGES["solve.stop_rel_residual"].problem(v)


SCHEMA: dict[str, dict[str, Key]] = {
    "problem": {
        "kind": Key((str,), "sparse_gaussian", _one_of("sparse_gaussian", "separable_gaussian", "file")),
        "loss": Key((str,), "squared", _loss_name),
        "n": Key((int,), 40, _range("problem.n")),
        "d": Key((int,), 200, _range("problem.d")),
        "k": Key((int,), 5, _range("problem.k")),
        "noise": Key(_NUM, 0.0, _range("problem.noise")),
        "signs": Key((bool,), False, doc="random signs on the planted nonzeros"),
        "seed": Key((int,), 0, _range("problem.seed")),
        "path": Key((str,), None, doc="the .npz file (kind = 'file')"),
        "normalization": Key((str,), "mean", _one_of("mean", "sum")),
    },
    "model": {
        "parametrization": Key((str, list), "diagonal", _parametrization),
        "depth": Key((int, list), 2, _range("model.depth")),
    },
    "flows": {
        "kinds": Key((list,), ["gf", "ssd"]),
        "duals": Key((bool,), False, doc="also solve the paired dual flows and check equivalence"),
        "dual_form": Key((str,), "rho", _one_of("rho", "theta")),
        "a": Key((str, int, float, list), "grad0", doc="frozen magnitudes: 'grad0' (|g(0)|), a number or a list"),
        "tau1": Key(_NUM, 0.01, _range("flows.tau1"),
                    doc="Adam's first-moment time constant τ1 = η/(1 − β1) when grid.tau1 is "
                        "unset (0.01: β1 = 0.9 at η = 1e-3; 0: no momentum)"),
        "tau2": Key(_NUM, 1.0, _range("flows.tau2"),
                    doc="Adam's and RMSProp's second-moment time constant τ2 = η/(1 − β2) "
                        "when grid.tau2 is unset (1: β2 = 0.999 at η = 1e-3)"),
        "bias_correction": Key((bool,), True, doc="Adam/RMSProp: divide the moments by 1 − e^{−t/τ} (as optax)"),
    },
    "grid": {
        "eps": Key(_GRID, [1e-2, 1e-1, 1.0]),
        "alpha": Key(_GRID, [0.01, 0.1]),
        "seed": Key((list, int), None, doc="problem seeds; default [problem.seed]"),
        "a": Key(_GRID, None, doc="frozen-SSD magnitudes to sweep (scalars >= 0); default: flows.a only"),
        "tau1": Key(_GRID, None, doc="Adam's τ1 values to sweep (>= 0); default: flows.tau1 only"),
        "tau2": Key(_GRID, None, doc="Adam's and RMSProp's τ2 values to sweep (>= 0); default: flows.tau2 only"),
        "weight_decay": Key(_GRID, [0.0]),
    },
    "solve": {
        "solver": Key((str,), "auto"),
        "rtol": Key(_NUM, None, _range("solve.rtol")),
        "atol": Key(_NUM, None, _range("solve.atol")),
        "t1": Key(_NUM, 100.0, _range("solve.t1")),
        "num_ts": Key((int,), 200, _range("solve.num_ts")),
        "t_min": Key(_NUM, None, _range("solve.t_min")),
        "max_steps": Key((int,), 500_000, _range("solve.max_steps")),
        "stop_rel_residual": Key(
            (bool, int, float), None, _stop_value,
            doc="stop at ||Xw − y||/||y|| ≤ this (a run that reaches t1 first is `not_interpolated`); false: "
                "never; unset: on (1e-8) where only end points matter (analysis.kkt or output.save = 'final', "
                "without duals), off otherwise; squared loss only (a classification loss stops at solve.stop_loss)",
        ),
        "stop_loss": Key(_NUM, None, _range("solve.stop_loss")),
        "pcoeff": Key(_NUM, 0.4, _range("solve.pcoeff")),
        "icoeff": Key(_NUM, 0.3, _range("solve.icoeff")),
    },
    "sweep": {
        "chunk_size": Key((int,), 16, _range("sweep.chunk_size")),
        "vmap_width": Key((int,), None, _range("sweep.vmap_width"),
                          doc="members vmapped together on a device; default chunk_size on accelerators, 1 on CPU"),
    },
    "analysis": {
        "kkt": Key((bool,), False),
        "stages": Key((bool,), False),
        "discrete": Key((bool,), False),
        "discrete_etas": Key((list,), [0.1, 0.05, 0.025, 0.0125]),
        "discrete_t1": Key(_NUM, 2.0, _range("analysis.discrete_t1"),
                           doc="horizon of the Adam-vs-flow comparison (§7)"),
    },
    "check": {
        "tolerance": Key(_NUM, 1e-6, _range("check.tolerance")),
        "floor": Key(_NUM, 1e-12, _range("check.floor")),
    },
    "output": {
        "dir": Key((str,), "results/quickstart", doc="default for a config file: results/<file stem>"),
        "save": Key((str,), "trajectories", _one_of("trajectories", "final")),
        "figures": Key((bool, str), True, lambda v: None if v in FIGURE_MODES else
                       'expected true (drawn in the background), "inline" or false'),
    },
}


def _type_name(types):
    return " or ".join(t.__name__ for t in types)


def _check_value(table: str, key: str, value: Any, spec: Key) -> Any:
    name = f"{table}.{key}"
    if isinstance(value, bool) and bool not in spec.types:
        raise InputError(f"{name}={value!r}: expected {_type_name(spec.types)}, got bool")
    if not isinstance(value, spec.types):
        raise InputError(f"{name}={value!r}: expected {_type_name(spec.types)}, got {type(value).__name__}")
    if spec.check is not None and not isinstance(value, (list, dict)):
        msg = spec.check(value)
        if msg:
            raise InputError(f"{name}={short_repr(value)}: {msg}")
    return float(value) if spec.types == _NUM else value


def expand_axis(name: str, value: Any, *, range_key: str | None = None) -> list[float]:
    """A grid axis: a number, a list of numbers, or `{start, stop, num, spacing = "log" | "linear"}`;
    every value in the axis's range (`axis_range(range_key or name)`: α's depends on the model)."""
    valid = axis_range(range_key or name)
    if isinstance(value, dict):
        allowed = {"start", "stop", "num", "spacing"}
        unknown = set(value) - allowed
        if unknown:
            raise InputError(f"{name}.{sorted(unknown)[0]}: unknown key (allowed: {sorted(allowed)})")
        for key in ("start", "stop", "num"):
            if key not in value:
                raise InputError(f"{name}: range needs '{key}' (got {value})")
        start, stop, num = value["start"], value["stop"], value["num"]
        spacing = value.get("spacing", "log")
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise InputError(f"{name}.num={num!r}: expected an integer >= 1")
        if num > MAX_AXIS_VALUES:
            raise InputError(f"{name}.num={num!r}: at most {MAX_AXIS_VALUES} values per grid axis")
        for key, v in (("start", start), ("stop", stop)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise InputError(f"{name}.{key}={v!r}: expected a number")
            valid.check(f"{name}.{key}", v)
        if spacing == "log":
            if not (start > 0 and stop > 0):
                raise InputError(f"{name}: log spacing needs start > 0 and stop > 0 (got {start}, {stop})")
            values = np.geomspace(start, stop, num)
        elif spacing == "linear":
            values = np.linspace(start, stop, num)
        else:
            raise InputError(f"{name}.spacing={spacing!r}: expected 'log' or 'linear'")
        values = [float(v) for v in values]
    elif isinstance(value, list):
        if not value:
            raise InputError(f"{name}=[]: needs at least one value")
        values = []
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise InputError(f"{name}[{i}]={v!r}: expected a number")
            valid.check(name, v)
            values.append(float(v))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        valid.check(name, value)
        values = [float(value)]
    else:
        raise InputError(f"{name}={value!r}: expected a number, a list or a range table")
    for v in values:
        valid.check(name, v)
    if len(values) > MAX_AXIS_VALUES:
        raise InputError(f"{name}: {len(values)} values, at most {MAX_AXIS_VALUES} per grid axis")
    _no_duplicates(name, values)
    return values


def _no_duplicates(name: str, values: list) -> None:
    """Identical grid values would compute identical runs twice."""
    seen = set()
    for v in values:
        if v in seen:
            raise InputError(f"{name}: duplicate value {v!r} (the same runs would be computed twice)")
        seen.add(v)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One primal run of a sweep: the flow kind (a built-in kind or a plugin's import path), its run
    parameters (the flow's `axes`, in order, then `weight_decay`; a value None means the flow's default,
    e.g. frozen SSD's `a` from `flows.a`), the problem seed, and the label of its model where the
    config compares several (`Config.models`; None: the config's one model)."""

    flow: str
    params: tuple[tuple[str, float | None], ...]
    seed: int
    model: str | None = None

    def get(self, name: str) -> float | None:
        return dict(self.params).get(name)

    @property
    def eps(self) -> float | None:
        return self.get("eps")

    @property
    def alpha(self) -> float:
        return self.get("alpha")

    def key(self) -> str:
        """A stable identifier: flow, ε, α, seed, then the flow's other parameters that are set, then the
        model where the config has several (`|model=linear`)."""
        key = f"{self.flow}|eps={self.eps!r}|alpha={self.alpha!r}|seed={self.seed}"
        rest = "".join(f"|{k}={v!r}" for k, v in self.other_params().items())
        return key + rest + ("" if self.model is None else f"|model={self.model}")

    def other_params(self) -> dict[str, float]:
        """The run parameters beyond ε and α that are set (e.g. a swept `a`, τ, λ), in order."""
        return {k: v for k, v in self.params if k not in ("eps", "alpha") and v is not None}

    def labels(self) -> dict[str, Any]:
        """What a run's record and its pair record say of the run beyond flow, ε, α and seed:
        `other_params`, and `model_label` where the config compares several models."""
        return {**self.other_params(), **({} if self.model is None else {"model_label": self.model})}

    @property
    def plan_kind(self) -> str:
        """What the plan groups runs by besides seed and solver (`Plan.of`'s `kinds`): the flow kind, and
        the model where the config has several (`ssd|model=linear`), so that a chunk, and the program
        it runs, never holds two models."""
        return self.flow if self.model is None else f"{self.flow}|model={self.model}"


@dataclasses.dataclass(frozen=True)
class Config:
    """A validated config: `raw` holds every table with defaults filled in."""

    raw: dict[str, dict[str, Any]]
    source: str = "<built-in quickstart>"

    def __getitem__(self, table: str) -> dict[str, Any]:
        return self.raw[table]

    @property
    def seeds(self) -> list[int]:
        seeds = self.raw["grid"]["seed"]
        if seeds is None:
            return [self.raw["problem"]["seed"]]
        return [seeds] if isinstance(seeds, int) else list(seeds)

    @property
    def eps_values(self) -> list[float]:
        return expand_axis("grid.eps", self.raw["grid"]["eps"])

    @property
    def alpha_values(self) -> list[float]:
        """`grid.alpha` in the range of every model (the linear model may start at 0, the diagonal
        network needs α > 0); with several models an error names the model."""
        models = list(self.models().values())
        for model in models:
            try:
                values = expand_axis("grid.alpha", self.raw["grid"]["alpha"], range_key=model.alpha_range)
            except InputError as exc:
                if len(models) == 1:
                    raise
                raise InputError(f"{exc} (for the model {model.label!r})") from None
        return values

    @property
    def weight_decay_values(self) -> list[float]:
        return expand_axis("grid.weight_decay", self.raw["grid"]["weight_decay"])

    @property
    def flow_classes(self) -> dict[str, type]:
        """`flows.kinds`, each resolved to its class (`resolve_flow`: built-in or plugin)."""
        from ._flows import resolve_flow

        return {kind: resolve_flow(kind, name=f"flows.kinds[{i}]") for i, kind in enumerate(self.raw["flows"]["kinds"])}

    def models(self) -> dict[str, AbstractModel]:
        """The config's models by label (`AbstractModel.label`), in order: for each
        `model.parametrization`, the linear model, or the diagonal network at each `model.depth`."""
        from ._model import make_model

        m = self.raw["model"]
        kinds = m["parametrization"] if isinstance(m["parametrization"], list) else [m["parametrization"]]
        depths = m["depth"] if isinstance(m["depth"], list) else [m["depth"]]
        models = [make_model(kind, None if kind == "linear" else depth)
                  for kind in kinds for depth in ([None] if kind == "linear" else depths)]
        return {model.label: model for model in models}

    def model(self, label: str | None = None) -> AbstractModel:
        """The model of a run: the one labelled `label` (a `RunSpec.model`), or, with None, the config's
        only model."""
        models = self.models()
        if label is None:
            if len(models) > 1:
                raise InputError(f"model: the config has several models ({list(models)}); name one")
            return next(iter(models.values()))
        if label not in models:
            raise InputError(f"model={label!r}: not a model of the config ({list(models)})")
        return models[label]

    @property
    def loss(self) -> str:
        """The loss's name (`problem.loss`)."""
        return self.raw["problem"]["loss"]

    @property
    def stop_rule(self) -> str:
        """What ends a run: `"interpolation"` (squared loss) or `"loss"` (a classification loss)."""
        from ._problem import LOSSES

        return LOSSES[self.loss].stop_rule

    @property
    def a_values(self) -> list[float] | None:
        return self._nonnegative_axis("a")

    def _nonnegative_axis(self, name: str) -> list[float] | None:
        """`grid.<name>` expanded (values in `RANGES`), or None when it is not swept."""
        value = self.raw["grid"].get(name)
        if value is None:
            return None
        return expand_axis(f"grid.{name}", value)

    def axis_values(self, name: str) -> list[float | None]:
        """The values a run parameter takes: `grid.<name>` when swept, else `[None]` (the flow's
        default: `flows.<name>` where the flows table has it)."""
        if name == "eps":
            return self.eps_values
        if name == "alpha":
            return self.alpha_values
        if name == "weight_decay":
            return self.weight_decay_values
        return self._nonnegative_axis(name) or [None]

    def run_specs(self) -> list[RunSpec]:
        """The expanded grid, in config order: models (where the config has several) × flows × seeds ×
        the flow's axes (`axes` of its class, e.g. ε × α, × `grid.a` for frozen SSD; GF has no ε axis)
        × `grid.weight_decay` (every flow's)."""
        models = list(self.models())
        specs = []
        for model in models if len(models) > 1 else [None]:
            for kind, cls in self.flow_classes.items():
                axes = (*cls.axes, "weight_decay")
                for seed in self.seeds:
                    for values in itertools.product(*(self.axis_values(name) for name in axes)):
                        specs.append(RunSpec(kind, tuple(zip(axes, values)), seed, model))
        return specs

    def problem(self, seed: int | None = None):
        """The problem for one seed (`file` problems ignore the seed), under `problem.loss`."""
        from ._problem import load_npz, separable_gaussian, sparse_gaussian

        p = self.raw["problem"]
        if p["kind"] == "file":
            return load_npz(self.data_path(), normalization=p["normalization"], loss=p["loss"])
        if p["kind"] == "separable_gaussian":
            return separable_gaussian(p["n"], p["d"], p["k"], noise=p["noise"], seed=p["seed"] if seed is None else seed,
                                      normalization=p["normalization"], loss=p["loss"])
        return sparse_gaussian(
            p["n"], p["d"], p["k"], noise=p["noise"], signs=p["signs"],
            seed=p["seed"] if seed is None else seed, normalization=p["normalization"],
        )

    def data_label(self, seed: int | None = None) -> str:
        """The config's data in a message: `problem.path='…'` for a file, else the generator and the seed
        (`problem.kind='separable_gaussian', seed=3`)."""
        p = self.raw["problem"]
        if p["kind"] == "file":
            return f"problem.path={str(self.data_path())!r}"
        return f"problem.kind={p['kind']!r}, seed={p['seed'] if seed is None else seed}"

    def data_path(self) -> Path:
        """`problem.path`, relative to the config file's folder: an existing file, else `InputError`."""
        given = self.raw["problem"]["path"]
        if given is None:
            raise InputError("problem.path: required when problem.kind = 'file'")
        if not given.strip():
            raise InputError(f"problem.path={given!r}: needs a file name (an .npz archive of X and y)")
        path = Path(given)
        if not path.is_absolute() and not self.source.startswith("<"):
            path = Path(self.source).parent / path
        if path.is_dir():
            raise InputError(f"problem.path={str(path)!r}: is a folder, not an .npz file")
        if not path.is_file():
            raise InputError(f"problem.path={str(path)!r}: no such file")
        return path

    def data_shape(self) -> tuple[int, int]:
        """The data's (n, d), without generating or loading them (a data file's from its header)."""
        p = self.raw["problem"]
        if p["kind"] == "file":
            from ._problem import npz_shape

            return npz_shape(self.data_path())
        return p["n"], p["d"]

    def check_duals(self) -> None:
        """Every flow of `flows.kinds` has a dual to be checked against (`mdflow check`, `flows.duals`) on
        each of the config's models, under its loss, at every `grid.weight_decay`: `flow.why_no_dual` of
        each (model, flow, λ), built cheaply on a one-sample problem of the loss (the answer depends on the
        shapes' kinds only)."""
        import numpy as np

        from ._flows import PRIMAL_FLOWS
        from ._problem import Problem, make_loss

        classes = self.flow_classes
        without = [kind for kind, cls in classes.items() if not cls.has_dual()]
        if without:
            with_dual = sorted(k for k, cls in PRIMAL_FLOWS.items() if cls.has_dual())
            raise InputError(f"flows.kinds={self.raw['flows']['kinds']!r}: flow {without[0]!r} has no dual flow to "
                             f"check against (flows with one: {with_dual})")
        a = self.raw["flows"]["a"]
        d = len(a) if isinstance(a, list) else 1
        problem = Problem(np.ones((1, d)), np.ones(1), self.raw["problem"]["normalization"],
                          loss_function=make_loss(self.loss))
        models = self.models()
        for label, model in models.items():
            where = f"model.parametrization={model.kind!r}, model.depth={model.depth}, problem.loss={self.loss!r}"
            for kind in classes:
                first = RunSpec(kind, (), 0, label if len(models) > 1 else None)
                for decay in self.weight_decay_values:
                    params = tuple((name, self.axis_values(name)[0]) for name in classes[kind].axes)
                    spec = dataclasses.replace(first, params=(*params, ("weight_decay", decay)))
                    why = self.flow(spec, problem).why_no_dual(problem)
                    if why is not None:
                        raise InputError(f"flows.kinds: flow {kind!r} ({where}, grid.weight_decay={decay!r}) has no "
                                         f"dual to check against: {why}")

    def flow(self, spec: RunSpec, problem, *, track_identity: bool = False):
        """The flow object of one run: the spec's parameters, unset ones from the `[flows]` table
        (`flows.a` for frozen SSD: "grad0" means the flow's own default `|g(0)|`), on the spec's model."""
        from ._flows import make_flow

        flows = self.raw["flows"]
        fixed = {**flows, "a": None if flows["a"] == "grad0" else flows["a"]}
        params = {name: fixed.get(name) if value is None else value for name, value in spec.params}
        return make_flow(spec.flow, problem, track_identity=track_identity, options=flows, model=self.model(spec.model),
                         **params)

    def solve_policy(self, *, duals: bool | None = None, **overrides):
        """The `SolvePolicy` in force; `duals` (default `flows.duals`) says whether runs are checked
        against their duals, which sets the tolerances left unset (`CHECK_TOLERANCES`, else
        `RUN_TOLERANCES`)."""
        s = self.raw["solve"]
        duals = self.raw["flows"]["duals"] if duals is None else duals
        kwargs = {k: s[k] for k in ("solver", "t1", "num_ts", "t_min", "max_steps", "pcoeff", "icoeff")}
        for key, default in zip(("rtol", "atol"), CHECK_TOLERANCES if duals else RUN_TOLERANCES):
            kwargs[key] = default if s[key] is None else s[key]
        kwargs["save"] = "trajectory" if self.raw["output"]["save"] == "trajectories" else "final"
        kwargs["stop_rel_residual"] = self.stop_rel_residual(duals=duals)
        kwargs["stop_loss"] = self.raw["solve"]["stop_loss"]
        kwargs.update(overrides)
        return SolvePolicy(**kwargs)

    def stop_rel_residual(self, *, duals: bool | None = None) -> float | None:
        """The stop tolerance in force: the config's number; `None` for `false`; if unset,
        `END_POINT_STOP` where only end points matter (KKT analysis, or `output.save = "final"`,
        without duals) — integrating the stiff equilibrium after interpolation is wasted work there —
        and `None` where trajectories on the fixed horizon are compared. A classification loss stops at a
        loss target instead (`solve.stop_loss`): `None`."""
        if self.stop_rule != "interpolation":
            return None
        value = self.raw["solve"]["stop_rel_residual"]
        if value is False:
            return None
        if value is not None:
            return float(value)
        end_points = self.raw["analysis"]["kkt"] or self.raw["output"]["save"] == "final"
        duals = self.raw["flows"]["duals"] if duals is None else duals
        return END_POINT_STOP if end_points and not duals else None

    def to_json(self) -> dict[str, Any]:
        return copy.deepcopy(self.raw)

    def hash(self) -> str:
        """Hash of everything that determines results (not the output folder): every table, the keys of
        `ADDED_KEYS` only where they differ from their defaults, and a plugin flow's source file."""
        content = {k: dict(v) for k, v in self.raw.items() if k != "output"}
        content["output"] = {"save": self.raw["output"]["save"]}
        for table, key in ADDED_KEYS:
            if content[table][key] == SCHEMA[table][key].default:
                del content[table][key]
        if not content["model"]:  # a config without a `[model]` table hashed as before it existed
            del content["model"]
        plugins = {kind: _source_digest(cls) for kind, cls in self.flow_classes.items() if ":" in kind}
        if plugins:
            content["plugins"] = plugins
        return json_hash(content)


def _source_digest(cls) -> str:
    """sha256 of the file a plugin flow class is defined in (so editing it changes the store identity)."""
    import inspect

    try:
        text = Path(inspect.getfile(cls)).read_bytes()
    except (OSError, TypeError):
        return "unknown"
    return hashlib.sha256(text).hexdigest()[:16]


def from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    """Validate a config dict (e.g. a parsed TOML file) and fill in defaults."""
    from ._flows import PRIMAL_FLOWS, resolve_flow

    if not isinstance(data, dict):
        raise InputError(f"config: expected a table, got {type(data).__name__}")
    raw: dict[str, dict[str, Any]] = {}
    for table in data:
        if table not in SCHEMA:
            raise InputError(f"{table}: unknown table (known: {sorted(SCHEMA)})")
        if not isinstance(data[table], dict):
            raise InputError(f"{table}={data[table]!r}: expected a table")
    for table, keys in SCHEMA.items():
        given = data.get(table, {})
        for key in given:
            if key not in keys and table != "grid":  # grid: a plugin flow's own axes (below)
                raise InputError(f"{table}.{key}: unknown key (known: {sorted(keys)})")
        raw[table] = {}
        for key, spec in keys.items():
            value = given.get(key, spec.default)
            if value is not None and key in given:
                value = _check_value(table, key, value, spec)
            raw[table][key] = copy.deepcopy(value)
    # Cross-key checks.
    kinds = raw["flows"]["kinds"]
    if not kinds:
        raise InputError("flows.kinds=[]: needs at least one flow")
    classes = {}
    for i, kind in enumerate(kinds):
        if isinstance(kind, str) and kind in classes:
            raise InputError(f"flows.kinds={kinds!r}: duplicate flow")
        cls = resolve_flow(kind, name=f"flows.kinds[{i}]")
        same = [k for k, c in classes.items() if c is cls]
        if same:
            raise InputError(f"flows.kinds[{i}]={kind!r}: the same flow as {same[0]!r} (the same runs would be "
                             "computed twice)")
        classes[kind] = cls
    # A plugin flow's own axes are grid keys (a grid key no flow of `flows.kinds` takes is refused below).
    plugin_axes = {name for cls in classes.values() for name in cls.axes if name not in SCHEMA["grid"]}
    for key, value in data.get("grid", {}).items():
        if key not in SCHEMA["grid"] and key not in plugin_axes:
            raise InputError(f"grid.{key}: unknown key (known: {sorted({*SCHEMA['grid'], *plugin_axes})})")
        if key in plugin_axes:
            _check_value("grid", key, value, Key(_GRID, None))
            raw["grid"][key] = copy.deepcopy(value)
    for kind, cls in classes.items():
        for name in cls.axes:
            if (name in plugin_axes and name not in cls.optional_axes and raw["grid"].get(name) is None
                    and name not in raw["flows"]):
                raise InputError(f"grid.{name}: flow {kind!r} needs it (its axes: {list(cls.axes)})")
    _check_model(raw, data)
    _check_loss(raw, data)
    a = raw["flows"]["a"]
    if isinstance(a, str) and a != "grad0":
        raise InputError(f"flows.a={a!r}: expected 'grad0', a number or a list of numbers")
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        RANGES["flows.a"].check("flows.a", a)
        raw["flows"]["a"] = float(a)
    if isinstance(a, list):
        if not a:
            raise InputError("flows.a=[]: needs one magnitude per coordinate (d values), or a number")
        for i, v in enumerate(a):
            RANGES["flows.a"].check(f"flows.a[{i}]", v)
        d = raw["problem"]["d"] if raw["problem"]["kind"] != "file" else None
        if d is not None and len(a) != d:
            raise InputError(f"flows.a: {len(a)} values, but problem.d={d} (one magnitude per coordinate)")
    # Keys set to something other than their default (a config's own `to_json()` lists every key).
    given = {k: v for k, v in data.get("problem", {}).items()
             if k in SCHEMA["problem"] and v != SCHEMA["problem"][k].default}
    if raw["problem"]["kind"] == "file":
        extra = [k for k in ("n", "d", "k", "noise", "signs", "seed") if k in given]
        if extra:
            raise InputError(f"problem.{extra[0]}: does not apply to problem.kind = 'file' (the data file "
                             "sets the sizes); remove it")
    elif raw["problem"]["kind"] == "separable_gaussian" and "signs" in given:
        raise InputError("problem.signs: does not apply to problem.kind = 'separable_gaussian' (its teacher has "
                         "random signs); remove it")
    elif given.get("path") is not None:
        raise InputError(f"problem.path: applies only to problem.kind = 'file' (kind is "
                         f"{raw['problem']['kind']!r}); remove it or set kind = 'file'")
    check_solver(raw["solve"]["solver"])
    t_min = raw["solve"]["t_min"]
    if t_min is not None and not t_min < raw["solve"]["t1"]:
        raise InputError(f"solve.t_min={t_min!r}: must be < solve.t1={raw['solve']['t1']}")
    seeds = raw["grid"]["seed"]
    if seeds is not None:
        if seeds == []:
            raise InputError("grid.seed=[]: needs at least one seed")
        for i, s in enumerate([seeds] if isinstance(seeds, int) else seeds):
            RANGES["problem.seed"].check(f"grid.seed[{i}]", s)
        _no_duplicates("grid.seed", [seeds] if isinstance(seeds, int) else seeds)
        if raw["problem"]["kind"] == "file":
            raise InputError(f"grid.seed={seeds!r}: does not apply to problem.kind = 'file' (file data have no "
                             "seed: every seed would compute the same runs); remove it")
    etas = raw["analysis"]["discrete_etas"]
    for i, eta in enumerate(etas):
        RANGES["analysis.discrete_etas"].check(f"analysis.discrete_etas[{i}]", eta)
    if raw["analysis"]["discrete"] and not etas:
        raise InputError("analysis.discrete_etas=[]: analysis.discrete = true needs at least one step size")
    config = Config(raw, source)
    if raw["problem"]["kind"] != "file" and raw["problem"]["k"] > raw["problem"]["d"]:
        raise InputError(f"problem.k={raw['problem']['k']}: must be <= problem.d={raw['problem']['d']}")
    if raw["problem"]["kind"] == "file":
        config.data_path()  # a file that exists, or an `InputError` naming problem.path
    # Expand the axes now so that grid errors surface before any work.
    config.eps_values, config.alpha_values, config.weight_decay_values  # noqa: B018
    num_runs = len(config.run_specs())
    if num_runs > MAX_RUNS:
        raise InputError(f"grid: {num_runs} runs, at most {MAX_RUNS} per config (split the sweep)")
    if config.a_values is not None:
        if raw["flows"]["a"] != "grad0":
            raise InputError(f"grid.a: sweeps the frozen magnitudes, so flows.a={raw['flows']['a']!r} "
                             "must be left at 'grad0'")
    for name, value in data.get("grid", {}).items():
        if value is None or name in ("seed", "eps", "alpha", "weight_decay"):  # every flow's, or with defaults
            continue
        if not any(name in cls.axes for cls in classes.values()):
            users = sorted(k for k, cls in PRIMAL_FLOWS.items() if name in cls.axes)
            raise InputError(f"grid.{name}: no flow in flows.kinds={kinds!r} takes {name} (flows that do: {users})")
    if raw["flows"]["duals"]:
        config.check_duals()
    if raw["analysis"]["discrete"]:
        _check_discrete(config)
    _warn_loose_stop(config)
    return config


# The largest ε at which a loose tolerance was measured to stall above a tighter stop
# (benchmarks/bench_loose_rtol.py, docs/benchmarks.md "Loose tolerances at small ε").
LOOSE_STOP_EPS = 1e-5


def _warn_loose_stop(config: Config) -> None:
    """A warning, not an error (gradient flow reaches such a stop), where a flow with ε ≤ `LOOSE_STOP_EPS`
    would stop at a relative residual below its rtol: the residual of SSD and Adam can stall above the
    stop, at a fraction of rtol, until `solve.max_steps` (docs/solvers.md)."""
    if not any("eps" in cls.axes for cls in config.flow_classes.values()):
        return
    eps = min(config.eps_values)
    if eps > LOOSE_STOP_EPS:
        return
    for duals in dict.fromkeys((config.raw["flows"]["duals"], False)):  # the check's tolerances, and run's
        policy = config.solve_policy(duals=duals)
        stop = policy.stop_rel_residual
        if stop is not None and stop < policy.rtol:
            warnings.warn(f"solve.stop_rel_residual={stop!r} is below solve.rtol={policy.rtol!r} with ε down to "
                          f"{eps:g}: at small ε the residual of SSD and Adam can stall above such a stop until "
                          "solve.max_steps; set solve.rtol at or below the stop (docs/solvers.md)", stacklevel=3)
            return


def _check_model(raw: dict[str, dict[str, Any]], data: dict[str, Any]) -> None:
    """`[model]`: one model, or several to compare (`Config.models`). `parametrization` is a name or a
    non-empty list of distinct names; `depth` the diagonal network's depth D >= 2, or a non-empty list
    of distinct depths (one diagonal network each); the linear model has depth 1 (its `depth` is 1 when
    it is the only parametrization and `depth` is unset). A list of one value is that value, so the
    config is today's one-model config (same hash, same runs)."""
    model = raw["model"]
    depth_given = "depth" in data.get("model", {})
    kinds, depths = model["parametrization"], model["depth"]
    if isinstance(kinds, list):
        if not kinds:
            raise InputError("model.parametrization=[]: needs at least one parametrization")
        for i, kind in enumerate(kinds):
            if problem := _parametrization(kind):  # the schema's check of one name
                raise InputError(f"model.parametrization[{i}]={short_repr(kind)}: {problem}")
        if len(set(kinds)) < len(kinds):
            raise InputError(f"model.parametrization={kinds!r}: duplicate parametrization (the same runs would be "
                             "computed twice)")
        kinds = model["parametrization"] = kinds[0] if len(kinds) == 1 else kinds
    if "diagonal" not in (kinds if isinstance(kinds, list) else [kinds]):  # the linear model only
        if depth_given and depths != 1:
            raise InputError(f"model.depth={short_repr(depths)}: the linear model has depth 1; remove it")
        model["depth"] = 1
        return
    for i, depth in enumerate(depths if isinstance(depths, list) else [depths]):
        name = f"model.depth[{i}]" if isinstance(depths, list) else "model.depth"
        RANGES["model.depth"].check(name, depth)
        if depth < 2:
            raise InputError(f"{name}={depth!r}: the diagonal network needs depth >= 2")
    if isinstance(depths, list):
        if not depths:
            raise InputError("model.depth=[]: needs at least one depth")
        _no_duplicates("model.depth", depths)
        model["depth"] = depths[0] if len(depths) == 1 else depths


def _check_loss(raw: dict[str, dict[str, Any]], data: dict[str, Any]) -> None:
    """`problem.loss` against the data, the stop keys and the analyses, before any work: a
    classification loss needs labels ±1 (`separable_gaussian` or a file; a file's labels are checked
    when it is read), stops at `solve.stop_loss` (never `solve.stop_rel_residual`), and has no
    interpolating minimizer for `analysis.kkt`; the squared loss stops at `solve.stop_rel_residual`."""
    from ._problem import LOSSES

    p, solve = raw["problem"], data.get("solve", {})
    loss = p["loss"]
    if LOSSES[loss].stop_rule == "interpolation":
        if solve.get("stop_loss") is not None:
            raise InputError(f"solve.stop_loss={solve['stop_loss']!r}: the {loss} loss stops at interpolation; "
                             "set solve.stop_rel_residual instead")
        return
    if p["kind"] == "sparse_gaussian":
        raise InputError(f"problem.loss={loss!r}: needs labels ±1, but problem.kind = 'sparse_gaussian' has real "
                         "labels; use problem.kind = 'separable_gaussian' (or 'file')")
    if solve.get("stop_rel_residual") is not None:
        raise InputError(f"solve.stop_rel_residual={solve['stop_rel_residual']!r}: the {loss} loss never "
                         "interpolates; set solve.stop_loss (a loss target) instead")
    if raw["analysis"]["kkt"]:
        raise InputError(f"analysis.kkt=true: the KKT conditions of interpolation do not apply to the {loss} loss "
                         "(no interpolating minimizer); remove it")


# The most optimizer steps `analysis.discrete` may take per run on its horizon: Σ_η discrete_t1/η.
# The default (t1 = 2, η down to 0.0125) takes 300; a typo such as η = 1e-9 would plan 2e9.
MAX_DISCRETE_STEPS = 10_000_000


def check_discrete(etas, t1, taus: dict[str, float], *, names: dict[str, str] | None = None) -> None:
    """What the discrete comparison (`analysis.discrete`, `discrete_record`) cannot do, refused before
    any work: more than `MAX_DISCRETE_STEPS` optimizer steps on the horizon (Σ t1/η), or an η above a
    time constant τ > 0 of the flow (`taus`: e.g. `{"tau1": 0.01}`; the discrete decay β = 1 − η/τ
    would be negative). `names` maps "etas", "t1" and the τ names to what the message calls them."""
    names = {"etas": "etas", "t1": "t1", **(names or {})}
    etas = [float(e) for e in etas]
    steps = sum(t1 / eta for eta in etas)
    if steps > MAX_DISCRETE_STEPS:
        raise InputError(f"{names['etas']}={etas!r} with {names['t1']}={t1!r}: {steps:.3g} optimizer steps per run "
                         f"(Σ t1/η), at most {MAX_DISCRETE_STEPS:.0e}: raise the smallest η or shorten the horizon")
    for name, tau in taus.items():
        if 0 < tau < max(etas):
            key = names.get(name, name)
            raise InputError(f"{names['etas']}={etas!r}: every η must be <= {key}={tau!r} (the discrete decay "
                             f"β = 1 − η/τ would be negative); lower the etas or raise {key}")


def _check_discrete(config: Config) -> None:
    """`check_discrete` for every flow of the config that has a discrete counterpart, every τ it runs."""
    an = config["analysis"]
    names = {"etas": "analysis.discrete_etas", "t1": "analysis.discrete_t1"}
    check_discrete(an["discrete_etas"], an["discrete_t1"], {}, names=names)
    for cls in config.flow_classes.values():
        if not cls.has_discrete:
            continue
        for name in ("tau1", "tau2"):
            if name in cls.axes:
                swept = config.raw["grid"][name] is not None
                key = f"grid.{name}" if swept else f"flows.{name}"
                for tau in config.axis_values(name) if swept else [config["flows"][name]]:
                    check_discrete(an["discrete_etas"], an["discrete_t1"], {name: tau}, names={**names, name: key})


def load(path: str | Path) -> Config:
    """Read and validate a TOML config file."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"config {str(path)!r}: is a folder, not a TOML file")
    if not path.is_file():
        raise InputError(f"config {str(path)!r}: no such file")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"config {str(path)!r}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise InputError(f"config {str(path)!r}: not a text file") from None
    except OSError as exc:
        raise InputError(f"config {str(path)!r}: cannot read ({exc.strerror or exc})") from None
    except RecursionError:
        raise InputError(f"config {str(path)!r}: nested too deeply to read (arrays or tables inside each "
                         "other thousands of levels deep)") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts (sys.int_info)
        raise InputError(f"config {str(path)!r}: not valid TOML ({exc})") from None
    output = data.get("output")
    if output is None or (isinstance(output, dict) and "dir" not in output):
        # Each config file gets its own folder by default (results/<file stem>), so two configs never
        # meet in one results store.
        data = {**data, "output": {**(output or {}), "dir": f"results/{path.stem}"}}
    return from_dict(data, source=str(path))


QUICKSTART: dict[str, Any] = {
    "problem": {"kind": "sparse_gaussian", "n": 40, "d": 200, "k": 5, "seed": 0},
    "flows": {"kinds": ["gf", "ssd"]},
    "grid": {"eps": [1e-2, 1e-1, 1.0], "alpha": [0.01, 0.1]},
    "solve": {"t1": 1e4, "num_ts": 200, "stop_rel_residual": 1e-7},
    "output": {"dir": "results/quickstart", "save": "trajectories"},
}


def quickstart() -> Config:
    """The built-in default that `mdflow run` uses without a config file."""
    return from_dict(QUICKSTART, source="<built-in quickstart>")
