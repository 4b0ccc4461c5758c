"""mdflow: continuous-time optimization flows, their mirror-descent duals and implicit bias, in JAX.

Importing mdflow changes no process-wide setting. Its solves need float64 (tolerances ≤ 1e-8, log
coordinates) and refuse to run without it: turn on `jax_enable_x64` at the start of the program (the
`mdflow` command does); see docs/design.md, "Process-wide settings".

The public names below are loaded on first use (`mdflow.solve` imports `_execution/executor.py`), so
`import mdflow` costs little more than `import jax`, and tools that need only configs or stored results
(`mdflow plot`, `mdflow info`) never load the solvers.
"""

import importlib as _importlib

_EXPORTS: dict[str, tuple[str, ...]] = {
    "_dual": ("DUAL_FORMS", "DualFlow", "dual_flow"),
    "_analysis.equivalence": ("VERDICTS", "format_table", "judge", "pair_record", "paired_dual"),
    "_plotting.pairs": ("plot_pair",),
    "_errors": ("InputError",),
    "_mirror": (
        "MIRROR_MAPS", "AbstractMirrorMap", "DepthPotential", "Euclidean", "Hypentropy", "L32Limit",
        "SSDPotential", "lambertw_log", "make_mirror",
    ),
    "_flows": (
        "GF", "SSD", "Adam", "RMSProp", "AbstractFlow", "AbstractPrimalFlow", "AbstractEMAFlow",
        "AbstractSignDescent", "AbstractDualPair", "AbstractSSDGeometry", "AbstractTracksIdentity",
        "AbstractDiscreteCounterpart", "AbstractFamilyMember", "FrozenSSD", "PRIMAL_FLOWS", "check_parameter",
        "make_flow", "resolve_flow",
    ),
    "_model": ("AbstractModel", "Diagonal", "Linear", "MODELS", "make_model"),
    "_problem": (
        "Problem", "AbstractLoss", "SquaredLoss", "LogisticLoss", "ExponentialLoss", "LOSSES", "make_loss",
        "load_npz", "separable_gaussian", "sparse_gaussian", "validate_data",
    ),
    "_solver.policy": ("SolvePolicy",),
    "_solver.solve": (
        "SOLVERS", "STATUSES", "RunStatus", "Solution", "SolveControls", "choose_solver", "stack_flows",
        "status_name",
    ),
    "_analysis.analyze": ("analyze_run",),
    "_analysis.discrete": ("discrete_record",),
    "_analysis.interpolators": ("min_l1", "min_l2", "min_l32", "min_linf", "min_lp"),
    "_analysis.margins": (
        "MaxMargin", "Separability", "margin_record", "margins_over_time", "max_margin", "max_margins",
        "normalized_margin", "separability",
    ),
    "_analysis.weight_decay": ("box_kkt_residual", "weight_decay_kkt"),
    "_load": ("load",),
    "_config": ("Config",),
    "_execution.run": ("execute",),
    "_analysis.kkt": ("KKTSolution", "bregman_projection", "kkt_errors", "kkt_record"),
    "_analysis.stages": ("stages_record",),
    "_execution.store": ("read_manifest",),
    "_execution.executor": ("solve", "sweep"),
    "_execution.plan": ("difficulty", "make_mesh", "use_cpu_cores"),
    "_solver.linear": ("CoordinatewiseJacobian", "DenseJacobian"),
    "_solver.rosenbrock": ("AbstractRosenbrock", "Rodas3", "Rodas4", "StiffSwitch"),
}
# Public names that differ from their module's own name: public -> (module, name there).
_ALIASES = {"config_from_dict": ("_config", "from_dict"), "load_config": ("_config", "load")}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
_MODULE_OF.update({public: module for public, (module, _) in _ALIASES.items()})
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    """Load the submodule that defines `name` on first use (PEP 562)."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), _ALIASES.get(name, (module, name))[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))


__version__ = "0.1.0"
