"""The primal–dual checker (docs/math.md §4): E3 identity, true SSD vs its dual, verdicts, table and figure."""

import dataclasses

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

import mdflow
from conftest import policy
from mdflow import FrozenSSD, format_table, pair_record, plot_pair, solve, stack_flows
from mdflow._execution.executor import index, run_calls, sweep
from mdflow._execution.plan import Layout, Plan
from mdflow._solver.solve import solve_batch

EPS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
ALPHAS = (0.01, 0.1, 1.0)


def _primal(flow, problem, policy):
    """A primal run solved as `pair_record` solves its coarse primal (a chunk of 2 on the sweep engine,
    members in sequence: bit for bit a single solve), so both share one program."""

    return index(sweep([flow], problem, policy, chunk_size=2), 0)


def _policy(t1, **kwargs):
    # the canonical Tsit5 policy without a stop: every primal and dual solve below shares its programs
    return policy(t1=t1, t_min=t1 * 1e-4, rtol=1e-10, atol=1e-12, **kwargs)


def test_e3_identity_on_grid(small_problem):
    """(ε/2) log(u/α) + J^u = −Γ and (ε/2) log(v/α) + J^v = +Γ along true SSD, every (ε, α)."""
    flows = [mdflow.make_flow("ssd", small_problem, eps=e, alpha=a, track_identity=True) for e in EPS for a in ALPHAS]
    batch = stack_flows(flows)
    # stop at interpolation: afterwards true SSD at small ε and large α is stiff (GF sped up by 1/ε)
    sol = solve_batch(batch, small_problem, policy(stop=1e-8, t1=20.0, rtol=1e-12, atol=1e-14))
    # every run ended normally: stopped at interpolation, or reached t1 first (the identity holds either way)
    assert {mdflow.status_name(s) for s in sol.status} <= {"ok", "not_interpolated"}
    p, q, gamma, j_u, j_v = (np.asarray(sol.ys[:, :, k]) for k in range(5))
    eps = np.asarray(batch.eps)[:, None, None]
    log_alpha = np.log(np.asarray(batch.alpha))[:, None, None]
    res_u = 0.5 * eps * (p - log_alpha) + j_u + gamma
    res_v = 0.5 * eps * (q - log_alpha) + j_v - gamma
    scale = np.max(np.abs(np.stack([0.5 * eps * (p - log_alpha), j_u, gamma])), axis=(0, 2, 3))
    assert np.all(scale > 1e-3)  # the terms are not trivially small
    resid = np.maximum(np.abs(res_u), np.abs(res_v)).max(axis=(1, 2)) / scale
    assert resid.max() <= 1e-8, resid


@pytest.fixture(scope="module")
def ssd_pairs(small_problem):
    """True SSD (ε = 0.1, α = 0.01, identity tracked) on the full horizon and on early windows."""
    flow = mdflow.make_flow("ssd", small_problem, eps=0.1, alpha=0.01, track_identity=True)
    out = {}
    for t1 in (20.0, 0.1, 0.01):
        policy = _policy(t1)
        primal = _primal(flow, small_problem, policy)
        out[t1] = pair_record(small_problem, flow, primal, policy)
    return out


def test_true_ssd_is_not_its_dual_and_delta_explains_it(ssd_pairs):
    record, arrays = ssd_pairs[20.0]
    assert record["verdict"] == "not_equivalent" and record["flow"] == "ssd", record
    assert record["max_rel_gap_w"] > 1e-3 and record["max_rel_gap_dual"] > 1e-3
    # a plateau: the gap is the same at a 100x looser tolerance (a property of the dynamics)
    assert 0.5 < record["gap_factor"] < 2 and record["coarse_rtol"] == 100 * record["rtol"]
    assert "plateaus" in record["reason"]
    assert record["identity_residual"] <= 1e-8
    assert record["assumption_residual"] > 1e-2  # |g| moved away from a = |g(0)|
    assert arrays["w_dual"].shape == arrays["w_primal"].shape == (30, 30)
    assert arrays["gap_w"].shape == arrays["delta"].shape == (30,)
    assert 0 < record["t_max_gap"] <= 20.0
    assert record["dual_steps"] > 0 and record["dual_wall_s"] > 0


def test_gap_shrinks_on_early_window_where_g_is_a(ssd_pairs):
    full, early, earliest = (ssd_pairs[t][0] for t in (20.0, 0.1, 0.01))
    assert early["max_rel_gap_w"] < 1e-2 * full["max_rel_gap_w"]
    assert earliest["max_rel_gap_w"] < 0.1 * early["max_rel_gap_w"]
    assert earliest["max_rel_gap_w"] < 1e-4
    assert earliest["assumption_residual"] < 1e-3 * full["assumption_residual"]


def test_verdicts_exact_pair_and_mismatch(small_problem):
    flow = mdflow.make_flow("ssd_frozen", small_problem, eps=0.1, alpha=0.1)
    policy = _policy(20.0)
    primal = _primal(flow, small_problem, policy)
    record, arrays = pair_record(small_problem, flow, primal, policy, tolerance=1e-6)
    assert record["verdict"] == "equivalent", record
    assert record["max_rel_gap_w"] <= 1e-6 and record["max_rel_gap_dual"] <= 1e-6
    # solver error: the gap falls with the tolerance (the recorded factor is the coarse/fine ratio)
    assert record["gap_factor"] == record["max_rel_gap_w_coarse"] / record["max_rel_gap_w"] >= 10, record
    assert record["identity_residual"] is None and record["assumption_residual"] is None
    assert "delta" not in arrays
    # the same trajectory checked against another frozen flow's dual (ε doubled) must fail
    wrong = FrozenSSD(flow.alpha, 2 * flow.eps, flow.a)
    bad, _ = pair_record(small_problem, wrong, primal, policy, tolerance=1e-6)
    assert bad["verdict"] == "not_equivalent" and bad["max_rel_gap_w"] > 1e-3
    # a primal saved without its trajectory cannot be checked
    final_only = eqx.tree_at(lambda s: (s.ys, s.ws), primal, (None, None), is_leaf=lambda x: x is None)
    with pytest.raises(mdflow.InputError):
        pair_record(small_problem, flow, final_only, policy)


def test_table_and_figure(ssd_pairs, tmp_path):
    records = [ssd_pairs[t][0] for t in (20.0, 0.1)]
    table = format_table(records).splitlines()
    assert len(table) > 2 + len(records) and table[2 + len(records)] == ""
    assert table[0].split()[:3] == ["flow", "eps", "alpha"] and "factor" in table[0]
    assert table[2].split()[-1] == "not_equivalent"
    legend = "\n".join(table[2 + len(records):])
    assert all(f"{col} " in legend for col in table[0].split()[3:]), legend  # every column explained
    paths = plot_pair(records[0], ssd_pairs[20.0][1], tmp_path / "pair")
    assert [p.suffix for p in paths] == [".pdf", ".png"] and all(p.stat().st_size > 0 for p in paths)
    assert b"/FontType 3" not in paths[0].read_bytes()  # pdf.fonttype 42: no Type 3 fonts
    assert jnp.isfinite(records[0]["max_rel_gap_dual"])


@pytest.mark.parametrize(
    "fine, coarse, verdict",
    [(1e-9, 1e-7, "equivalent"),  # falls, within tolerance
     (1e-12, 2e-12, "equivalent"),  # a round-off floor: both within tolerance
     (1e-2, 1.1e-2, "not_equivalent"),  # a plateau above tolerance
     (1e-5, 1e-3, "inconclusive"),  # still falling, above tolerance: solver error
     (9e-7, 2e-6, "inconclusive")],  # within tolerance only at the finer solve, not falling
)
def test_judge(fine, coarse, verdict):
    got, reason = mdflow.judge(fine, coarse, 1e-6)
    assert got == verdict and got in mdflow.VERDICTS and reason, (got, reason)


def test_early_stop_is_compared_on_the_common_window(small_problem):
    """A primal that stops early (residual 1e-3) against a dual that runs on: the gap counts only up to
    the earlier stop (a held state is never compared with a moving one), both stop times recorded."""
    flow = mdflow.make_flow("gf", small_problem, alpha=0.1)
    stopping = policy(stop=1e-3, rtol=1e-11, atol=1e-13, t1=100.0, t_min=1e-3)
    primal = _primal(flow, small_problem, stopping)
    assert bool(primal.stopped) and float(primal.t_end) < 100.0
    running = policy(rtol=1e-11, atol=1e-13, t1=100.0, t_min=1e-3)
    record, arrays = pair_record(small_problem, flow, primal, running, tolerance=1e-6)
    assert record["dual_t_end"] == 100.0 and record["primal_t_end"] == float(primal.t_end)
    assert record["t_common"] == record["primal_t_end"]
    assert record["verdict"] == "equivalent" and record["max_rel_gap_w"] <= 1e-7, record
    after = arrays["ts"] > record["t_common"]
    assert after.any() and np.all(np.isnan(arrays["gap_w"][after]))


@pytest.mark.parametrize("kind, eps, alpha", [("gf", None, 1.0), ("ssd_frozen", 1e-3, 1.0), ("ssd_frozen", 1e-3, 0.1),
                                              ("ssd_frozen", 1e-3, 0.01)])
def test_exact_pairs_agree_to_1e9_at_the_check_settings(small_problem, kind, eps, alpha):
    """At configs/check.toml's solve settings (Tsit5, rtol 1e-13, atol 1e-18) the exact pairs agree to
    ≤ 1e-9 relative to ‖w(t)‖ from the first saved time on (t_min = 1e-5 here), where w is still small:
    the dual state ρ starts at 0 and, at α = 1, so does log u. There an absolute tolerance of 1e-14
    (the earlier setting) is no longer small against the states, and the same gap exceeds 1e-9 early on."""
    flow = mdflow.make_flow(kind, small_problem, eps=eps, alpha=alpha)
    pol = policy(t1=20.0, t_min=1e-5, rtol=1e-13, atol=1e-18)
    record, _ = pair_record(small_problem, flow, solve(flow, small_problem, pol), pol)
    assert record["verdict"] == "equivalent" and record["max_rel_gap_w"] <= 1e-9, record
    if alpha == 1.0 and kind == "ssd_frozen":
        loose = dataclasses.replace(pol, rtol=1e-12, atol=1e-14)
        before, _ = pair_record(small_problem, flow, solve(flow, small_problem, loose), loose)
        assert before["max_rel_gap_w"] > 1e-9 and before["t_max_gap"] < 1e-3, before


def test_gf_beside_tracked_ssd_runs_its_program_bit_for_bit(small_problem):
    """A plan whose SSD runs track the E3 integrals (a check's) runs its GF chunks with those rows too
    (`Plan.identity_rows`): one program for both kinds (same integrand structure and shapes), and GF's
    solution is bit for bit the one it gets alone, its states cut back to its own rows."""
    import jax

    from mdflow._execution.executor import _integrand

    pol = _policy(20.0)  # the programs of `ssd_pairs` and `test_early_stop_...` (nothing new to compile)
    gf = mdflow.make_flow("gf", small_problem, alpha=0.1)
    ssd = mdflow.make_flow("ssd", small_problem, eps=0.1, alpha=0.01, track_identity=True)
    plan = Plan.of([gf, ssd], {0: small_problem}, pol, Layout.of(2), kinds=["gf", "ssd"])
    assert plan.identity_rows and not Plan.of([gf], {0: small_problem}, pol, Layout.of(2)).identity_rows
    members = [_integrand(f, small_problem, plan.identity_rows) for f in (gf, ssd)]
    shapes = [(jax.tree.structure(m), [np.shape(x) for x in jax.tree.leaves(m)]) for m in members]
    assert shapes[0] == shapes[1]
    solved = {done.chunk.flow: done.solution for call in run_calls(plan) for done in call}
    alone = sweep([gf], small_problem, pol, chunk_size=2)
    assert solved["gf"].ys.shape == alone.ys.shape and solved["ssd"].ys.shape[2] == alone.ys.shape[2] + 3
    for key, value in vars(alone).items():
        np.testing.assert_array_equal(getattr(solved["gf"], key), value, err_msg=key)


def test_batched_pairs_equal_single_pair_records(small_problem):
    """`solve_pairs` on a padded chunk (what `mdflow check` runs for a sweep call) gives, run for run,
    the records and arrays `pair_record` gives for the run alone: bit for bit on CPU, where a chunk's
    members run one after the other, so a member's solve does not depend on its chunk-mates (nor on the
    chunk size: chunks of 3 and 4 give these bits too; only a chunk of 1, a vmap of one member, rounds
    differently, which is why `pair_record` pads to 2)."""
    from mdflow._analysis.equivalence import pair_record_from, solve_pairs

    policy = _policy(20.0)  # with a chunk of 2, the programs of `ssd_pairs` (nothing new to compile)
    flows = [mdflow.make_flow("ssd", small_problem, eps=e, alpha=a, track_identity=True)
             for e, a in ((0.1, 0.01), (1.0, 0.1))]
    plan = Plan.of(flows, {0: small_problem}, policy, Layout.of(2), costs=range(len(flows)))  # in this order
    (chunk,) = plan.chunks
    (call,) = run_calls(plan)
    primals = call[0].solution
    (solved,), calls = solve_pairs(plan, [(chunk, primals)])
    assert calls.fine_dual.solve_s > 0 and calls.solve_s > calls.fine_dual.solve_s
    for j, flow in enumerate(flows):
        primal = index(primals, j)
        batched, batched_arrays = pair_record_from(solved[j], small_problem, flow, primal, policy)
        single, single_arrays = pair_record(small_problem, flow, primal, policy)
        assert batched.pop("dual_wall_s") > 0 and single.pop("dual_wall_s") > 0
        assert batched == single
        assert batched_arrays.keys() == single_arrays.keys()
        for key in batched_arrays:
            np.testing.assert_array_equal(batched_arrays[key], single_arrays[key], err_msg=key)
    # Non-trivial pairs: true SSD is not its dual, the gaps differ between runs.
    assert solved[0].fine.num_steps != solved[1].fine.num_steps


def test_pairs_prepared_ahead_in_a_worker_thread(small_problem, fresh_programs):
    """`prepare_pairs` (what `mdflow check` runs in a worker thread while the primals compile and solve)
    makes each call's pair plan and builds its programs before the solves need them: the solves build
    nothing more (one program each, counted once), the first call to use a program reports its build
    time and later ones none, and the pairs are bit for bit those made without it."""
    from concurrent.futures import ThreadPoolExecutor

    from mdflow._analysis.equivalence import pair_record_from, prepare_pairs, solve_pairs
    from mdflow._execution import executor

    policy = _policy(20.0)  # the programs of `ssd_pairs` and the test above (nothing new to compile)
    flows = [mdflow.make_flow("ssd", small_problem, eps=e, alpha=a, track_identity=True)
             for e, a in ((0.1, 0.01), (1.0, 0.1))]
    plan = Plan.of(flows, {0: small_problem}, policy, Layout.of(2), costs=range(len(flows)))
    (chunk,) = plan.chunks
    before = executor.num_programs()
    with ThreadPoolExecutor(1) as pool:
        (ahead,) = prepare_pairs(plan, pool)
        (call,) = run_calls(plan)  # the primal program, built here while the worker builds the dual's
        primals = call[0].solution
        (solved,), calls = solve_pairs(plan, [(chunk, primals)], dual_plan=ahead.result())
    assert executor.num_programs() - before == 2  # the primal's and the dual's, each built once
    assert call[0].timing.compile_s > 0 and call[0].timing.program
    assert calls.fine_dual.compile_s > 0 and calls.fine_dual.program
    assert calls.coarse_dual.compile_s == 0 and calls.coarse_primal.compile_s == 0
    (plain,), _ = solve_pairs(plan, [(chunk, primals)])  # the pair plan made here, the programs reused
    assert executor.num_programs() - before == 2
    for j, flow in enumerate(flows):
        primal = index(primals, j)
        ahead_record, ahead_arrays = pair_record_from(solved[j], small_problem, flow, primal, policy)
        plain_record, plain_arrays = pair_record_from(plain[j], small_problem, flow, primal, policy)
        assert ahead_record.pop("dual_wall_s") > 0 and plain_record.pop("dual_wall_s") > 0
        assert ahead_record == plain_record
        for key in plain_arrays:
            np.testing.assert_array_equal(ahead_arrays[key], plain_arrays[key], err_msg=key)
