"""mdflow: continuous-time optimization flows, their mirror-descent duals and implicit bias, in JAX.

Importing mdflow turns on float64 (the flows need it: tolerances ≤ 1e-8, log coordinates), and,
unless the environment sets it, `EQX_ON_ERROR=nan` before equinox is imported: see `_errors.py`.

The public names below are loaded on first use (`mdflow.solve` imports `_solver/solve.py`, hence diffrax), so
`import mdflow` costs little more than `import jax`, and tools that need only configs or stored results
(`mdflow plot`, `mdflow info`) never load the solvers.
"""

import importlib as _importlib
import os as _os

_os.environ.setdefault("EQX_ON_ERROR", "nan")  # before equinox (diffrax) is imported; see `_errors.py`

import jax as _jax

_jax.config.update("jax_enable_x64", True)

_EXPORTS: dict[str, tuple[str, ...]] = {
    "_dual": ("DUAL_FORMS", "DualFlow", "dual_flow"),
    "_analysis.equivalence": ("VERDICTS", "format_table", "judge", "pair_record", "paired_dual", "plot_pair"),
    "_errors": ("InputError",),
    "_mirror": (
        "MIRROR_MAPS", "AbstractMirrorMap", "Hypentropy", "L32Limit", "SSDPotential", "lambertw_log",
        "make_mirror",
    ),
    "_flows": (
        "GF", "SSD", "Adam", "RMSProp", "AbstractFlow", "AbstractPrimalFlow", "AbstractEMAFlow", "FrozenSSD",
        "PRIMAL_FLOWS", "check_parameter", "make_flow", "resolve_flow",
    ),
    "_problem": ("Problem", "load_npz", "separable_gaussian", "sparse_gaussian", "validate_data"),
    "_solver.solve": (
        "SOLVERS", "STATUSES", "RunStatus", "Solution", "SolveControls", "SolvePolicy", "select_solver", "solve", "solve_batch",
        "stack_flows", "status_name",
    ),
    "_analysis.analyze": ("analyze_run",),
    "_analysis.discrete": ("discrete_record",),
    "_analysis.interpolators": ("min_l1", "min_l2", "min_l32", "min_linf", "min_lp"),
    "_load": ("load",),
    "_config": ("Config",),
    "_execution.run": ("execute",),
    "_analysis.kkt": ("KKTSolution", "bregman_projection", "kkt_errors", "kkt_record"),
    "_analysis.stages": ("stages_record",),
    "_execution.store": ("read_manifest",),
    "_execution.sweep": ("difficulty", "make_mesh", "solve_chunks", "sweep", "use_cpu_cores"),
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
