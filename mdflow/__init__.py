"""mdflow: continuous-time optimization flows, their mirror-descent duals and implicit bias, in JAX.

Importing mdflow turns on float64 (the flows need it: tolerances ≤ 1e-8, log coordinates).
"""

import jax as _jax

_jax.config.update("jax_enable_x64", True)

from ._dual import DUAL_FORMS as DUAL_FORMS, DualFlow as DualFlow, dual_flow as dual_flow
from ._equivalence import (
    VERDICTS as VERDICTS,
    format_table as format_table,
    judge as judge,
    pair_record as pair_record,
    paired_dual as paired_dual,
    plot_pair as plot_pair,
)
from ._errors import InputError as InputError
from ._mirror import (
    MIRROR_MAPS as MIRROR_MAPS,
    AbstractMirrorMap as AbstractMirrorMap,
    Hypentropy as Hypentropy,
    L32Limit as L32Limit,
    SSDPotential as SSDPotential,
    lambertw_log as lambertw_log,
    make_mirror as make_mirror,
    mirror_for_flow as mirror_for_flow,
)
from ._flows import (
    GF as GF,
    SSD as SSD,
    AbstractFlow as AbstractFlow,
    AbstractPrimalFlow as AbstractPrimalFlow,
    FrozenSSD as FrozenSSD,
    PRIMAL_FLOWS as PRIMAL_FLOWS,
    make_flow as make_flow,
)
from ._problem import (
    Problem as Problem,
    load_npz as load_npz,
    sparse_gaussian as sparse_gaussian,
    validate_data as validate_data,
)
from ._solve import (
    SOLVERS as SOLVERS,
    STATUSES as STATUSES,
    Solution as Solution,
    SolvePolicy as SolvePolicy,
    select_solver as select_solver,
    solve as solve,
    solve_batch as solve_batch,
    stack_flows as stack_flows,
    status_name as status_name,
)
from ._analysis import analyze_run as analyze_run
from ._discrete import discrete_record as discrete_record
from ._interpolators import min_l1 as min_l1, min_l2 as min_l2, min_l32 as min_l32, min_lp as min_lp
from ._load import load as load
from ._config import Config as Config, from_dict as config_from_dict, load as load_config
from ._run import execute as execute
from ._kkt import (
    KKTSolution as KKTSolution,
    bregman_projection as bregman_projection,
    kkt_errors as kkt_errors,
    kkt_record as kkt_record,
)
from ._stages import stages_record as stages_record
from ._store import read_manifest as read_manifest
from ._sweep import (
    difficulty as difficulty,
    make_mesh as make_mesh,
    solve_chunks as solve_chunks,
    sweep as sweep,
    use_cpu_cores as use_cpu_cores,
)
from ._linear import CoordinatewiseJacobian as CoordinatewiseJacobian, DenseJacobian as DenseJacobian
from ._rosenbrock import (
    AbstractRosenbrock as AbstractRosenbrock,
    Rodas3 as Rodas3,
    Rodas4 as Rodas4,
    StiffSwitch as StiffSwitch,
)

__version__ = "0.1.0"
