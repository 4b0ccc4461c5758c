"""mdflow: continuous-time optimization flows, their mirror-descent duals and implicit bias, in JAX.

Importing mdflow turns on float64 (the flows need it: tolerances ≤ 1e-8, log coordinates).
"""

import jax as _jax

_jax.config.update("jax_enable_x64", True)

from ._errors import InputError as InputError
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

__version__ = "0.1.0"
