"""The sweep engine: difficulty order, chunk plans, chunked vmap vs a per-run loop, one compiled
function across ε/α values, and identical results on 1 and 4 devices."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import dataclasses

import jax
import numpy as np
import pytest

import mdflow as md
from conftest import policy as canonical_policy
from mdflow._execution import executor as _executor, plan as _plan
from mdflow._solver.rosenbrock import share_mode
from mdflow._solver.solve import _solve as _solve_one
from mdflow._execution.executor import sweep
from mdflow._execution.plan import Chunk, Layout, batches, difficulty, plan_chunks
from mdflow._execution.progress import Progress
from mdflow._solver.solve import solve_batch


@pytest.fixture(scope="module")
def problem(small_problem):
    return small_problem


EPS = [0.03, 0.3, 3.0]
ALPHA = [0.01, 0.1]
# Chunks of 2 throughout (conftest's plumbing chunks, `pair_record`'s): members in sequence (width 1) or
# vmapped (2), one compiled program each, shared across the suite (Tsit5: the engine is tested here,
# not the solver).
CHUNK = 2


def flows_for(problem, eps=EPS, alpha=ALPHA):
    return [md.make_flow("ssd", problem, eps=e, alpha=a) for e in eps for a in alpha]


def policy(solver="tsit5"):
    """conftest's canonical Tsit5 policy with a stop (its single-run and batch programs are shared); every
    run interpolates before t1."""
    return canonical_policy(solver, stop=1e-7, t1=1e4)


def test_difficulty_order():
    # Measured order (Tsit5, n=100, d=1000, stop 1e-6): small α with large ε is hardest; tiny ε is
    # stiff; GF is the ε → ∞ limit of the escape term.
    d = difficulty
    assert d(10.0, 1e-3) > d(1.0, 1e-3) > d(0.1, 1e-3) > d(0.01, 1e-3)
    assert d(10.0, 1e-3) > d(10.0, 1e-2) > d(10.0, 0.1)
    assert d(1e-8, 0.1) > d(1e-4, 0.1) > d(1e-2, 0.1)
    assert d(None, 0.01) == pytest.approx(100.0) and d(None, 0.01) > d(1.0, 0.01)
    assert d(1.0, np.array([0.1, 0.01])) == pytest.approx(d(1.0, 1 / 55.0))


def test_plan_chunks_covers_every_run_once_easiest_first():
    eps = [1.0, 1e-6, 0.1, 10.0, 0.01]
    runs = list(range(len(eps)))
    plan = plan_chunks([((0, "ssd", "tsit5"), runs, [difficulty(e, 0.1) for e in eps]),
                        ((1, "gf", "tsit5"), [5, 6, 7], [difficulty(None, a) for a in (0.1, 0.01, 1.0)])], 2)
    assert [c.runs for c in plan] == [(2, 0), (3, 4), (1,), (7, 5), (6,)]
    assert [c.index for c in plan] == list(range(5))
    assert [c.seed for c in plan] == [0, 0, 0, 1, 1]
    with pytest.raises(ValueError):
        plan_chunks([], 0)


def test_batches_group_same_variant_up_to_device_count():
    plan = [Chunk(i, s, f, "tsit5", (i,)) for i, (s, f) in enumerate([(0, "a")] * 5 + [(0, "b")] * 2 + [(1, "b")])]
    calls = batches(plan, 2)
    assert [[c.index for c in call] for call in calls] == [[0, 1], [2, 3], [4], [5, 6], [7]]
    assert [[c.index for c in call] for call in batches(plan, 1)] == [[i] for i in range(8)]


@pytest.mark.parametrize("vmap_width", [1, 2])
def test_chunked_sweep_matches_per_run_loop(problem, vmap_width):
    pol = policy()
    flows = flows_for(problem)
    # chunks of 4 and 2 (padded to 4); members one after the other, in vmapped pairs, or all vmapped
    batched = sweep(flows, problem, pol, chunk_size=CHUNK, vmap_width=vmap_width)
    for i, flow in enumerate(flows):
        one = md.solve(flow, problem, pol)
        assert int(batched.status[i]) == int(one.status) == 0
        w_b = flow.weights(batched.y_final[i], problem)
        w_1 = flow.weights(one.y_final, problem)
        if vmap_width == 1:  # the same computation as `solve`
            np.testing.assert_allclose(batched.loss[i], np.asarray(one.loss), rtol=1e-12, atol=0)
            np.testing.assert_allclose(w_b, w_1, rtol=0, atol=1e-12)
            assert int(batched.num_steps[i]) == int(one.num_steps)
        else:
            # A vmapped batch may round differently (matrix-matrix vs matrix-vector kernels):
            # agreement is at the solver's tolerance, and the order of the runs must be restored.
            np.testing.assert_allclose(batched.loss[i], np.asarray(one.loss), rtol=1e-6, atol=1e-14)
            np.testing.assert_allclose(w_b, w_1, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(batched.ts[i], np.asarray(one.ts))
        np.testing.assert_allclose(batched.ys[i][-1], np.asarray(one.ys)[-1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("vmap_width", [1, 2])
def test_chunks_equal_one_batch_of_the_same_size(problem, vmap_width):
    """Padding and chunking change nothing: a padded chunk's real member equals, bit for bit, that member
    of an unpadded batch (vmapped: test_flows.py's batch of 4; in sequence: single solves)."""
    pol = policy()
    flows = flows_for(problem)[:4]
    ref = solve_batch(md.stack_flows(flows), problem, pol)
    got = sweep(flows[:1], problem, pol, chunk_size=CHUNK, vmap_width=vmap_width)
    if vmap_width == 1:
        ref = md.stack_flows([md.solve(f, problem, pol) for f in flows])
    for key in ("y_final", "ys", "loss", "rel_residual", "t_end", "num_steps", "status"):
        np.testing.assert_array_equal(getattr(got, key), np.asarray(getattr(ref, key))[:1], err_msg=key)


def test_solver_choice_by_layout(problem, monkeypatch):
    """`choose_solver` at the width a layout's chunks run with (`Layout.solver`): `auto` in a chunk
    vmapped 8 or more wide is the shared-mode switch; members in sequence, narrower batches, a pinned
    solver and small chunks keep their solver; on an accelerator (emulated) the default width (the
    chunk) decides. A run alone (`mdflow.solve`) is a width of 1."""
    flow = flows_for(problem)[0]
    mesh = _plan.make_mesh(jax.devices()[:1])
    auto = md.SolvePolicy()
    assert Layout(16, mesh, None).solver(auto, flow) == "tsit5_rodas4"  # CPU default: width 1
    assert Layout(16, mesh, 1).solver(auto, flow) == "tsit5_rodas4"
    assert Layout(16, mesh, 4).solver(auto, flow) == "tsit5_rodas4"  # narrow batch: per-member modes
    assert Layout(4, mesh, 16).solver(auto, flow) == "tsit5_rodas4"  # width capped at the chunk size
    assert Layout(16, mesh, 8).solver(auto, flow) == "tsit5_rodas4_shared"
    for pinned in ("tsit5_rodas4", "rodas4", "tsit5"):
        assert Layout(16, mesh, 16).solver(md.SolvePolicy(solver=pinned), flow) == pinned
    assert md.choose_solver(auto, flow) == "tsit5_rodas4"
    assert md.choose_solver(auto, flow, vmap_width=7) == "tsit5_rodas4"
    assert md.choose_solver(auto, flow, vmap_width=8) == "tsit5_rodas4_shared"
    monkeypatch.setattr(_plan, "_on_host", lambda mesh: False)  # an accelerator: default width = chunk
    assert Layout(16, mesh, None).solver(auto, flow) == "tsit5_rodas4_shared"
    assert Layout(4, mesh, None).solver(auto, flow) == "tsit5_rodas4"
    assert Layout(16, mesh, None).solver(md.SolvePolicy(solver="rodas4"), flow) == "rodas4"


def test_share_mode_decisions():
    """Under vmap the batch is stiff where any member is; pulled-in members restart their vote count;
    agreeing batches and a single run are unchanged."""
    f0 = np.zeros((3, 2))
    shared = jax.vmap(share_mode)
    stiff, count, _ = shared((np.array([False, True, False]), np.array([1, 1, 2]), f0))
    assert stiff.tolist() == [True, True, True] and count.tolist() == [0, 1, 0]
    for flags in ([False] * 3, [True] * 3):
        stiff, count, _ = shared((np.array(flags), np.array([1, 0, 2]), f0))
        assert stiff.tolist() == flags and count.tolist() == [1, 0, 2]
    for flag in (False, True):
        stiff, count, _ = share_mode((np.array(flag), np.array(1), f0[0]))
        assert bool(stiff) == flag and int(count) == 1


@pytest.mark.slow
def test_shared_mode_switch_alone_is_the_switch(small_problem):
    """A single run of `tsit5_rodas4_shared` takes exactly `tsit5_rodas4`'s steps (ε = 1e-4 at a 1e-8
    stop: the switch takes Rodas4 steps near the stop, 7 of 1 461 as counted by benchmarks/vmap_policy.py)."""
    flow = md.make_flow("ssd", small_problem, eps=1e-4, alpha=0.1)
    base = md.SolvePolicy(t1=50.0, num_ts=8, stop_rel_residual=1e-8)
    a = md.solve(flow, small_problem, dataclasses.replace(base, solver="tsit5_rodas4"))
    b = md.solve(flow, small_problem, dataclasses.replace(base, solver="tsit5_rodas4_shared"))
    assert int(a.status) == 0 and bool(a.stopped)
    for key in ("ys", "y_final", "loss", "t_end", "num_steps", "num_rejected", "status"):
        np.testing.assert_array_equal(np.asarray(getattr(a, key)), np.asarray(getattr(b, key)), err_msg=key)


@pytest.mark.slow
def test_vmapped_auto_chunk_shares_the_mode_and_matches_the_loop(small_problem):
    """A vmapped `auto` chunk whose members turn stiff at different times runs the shared-mode switch:
    its path differs from the per-member switch's (members are pulled into the implicit mode), and it
    has the loop's statuses and stops, with end points at the solver tolerance."""
    flows = [md.make_flow("ssd", small_problem, eps=e, alpha=a) for e, a in ((1.0, 1.0), (1e-3, 0.1), (1e-4, 0.1))]
    pol = md.SolvePolicy(t1=50.0, num_ts=8, stop_rel_residual=1e-8, save="final")
    lines = []
    batched = sweep(flows, small_problem, pol, chunk_size=8, vmap_width=8, log=lines.append,
                    mesh=_plan.make_mesh(jax.devices()[:1]))  # padded to 8 with copies of the first
    assert "3 x tsit5_rodas4_shared" in lines[0]
    per_member = solve_batch(md.stack_flows(flows), small_problem, dataclasses.replace(pol, solver="tsit5_rodas4"))
    assert np.any(np.asarray(batched.num_steps) != np.asarray(per_member.num_steps))
    tol = 1e-6
    for i, flow in enumerate(flows):
        one = md.solve(flow, small_problem, pol)  # the per-member switch, alone
        assert int(batched.status[i]) == int(one.status) == 0
        assert bool(batched.stopped[i]) and bool(one.stopped) and float(batched.rel_residual[i, -1]) <= 1e-8
        w_b, w_1 = flow.weights(batched.y_final[i], small_problem), flow.weights(one.y_final, small_problem)
        np.testing.assert_allclose(w_b, w_1, rtol=tol, atol=tol * float(np.max(np.abs(w_1))))


def test_no_recompiles_across_eps_alpha_values(problem, fresh_programs):
    pol = policy()
    before = _executor.num_programs()
    sweep(flows_for(problem), problem, pol, chunk_size=CHUNK, vmap_width=2)  # two chunks, vmapped pairs
    sweep(flows_for(problem, eps=[0.05, 0.5, 5.0, 50.0], alpha=[0.02, 0.2]), problem, pol, chunk_size=CHUNK,
          vmap_width=2)
    other = md.sparse_gaussian(problem.n, problem.d, 3, seed=7)  # another problem of the same shape
    sweep(flows_for(other, eps=[0.07], alpha=[0.3]), other, pol, chunk_size=CHUNK, vmap_width=2)
    assert _executor.num_programs() - before == 1


def test_progress_lines():
    lines = []
    p = Progress(10, 3, lines.append)
    p.update(0, 4, "first", wall=2.0)
    p.update(1, 4, "second", wall=2.0)
    p.update(2, 2, "last", wall=1.0)
    assert lines[0].startswith("[chunk 1/3] 4/10 runs") and "ETA 3.0 s" in lines[0]
    assert lines[1].startswith("[chunk 2/3] 8/10 runs") and "ETA 1.0 s" in lines[1]
    assert "10/10 runs" in lines[2] and "ETA 0 s" in lines[2]
    # With predicted costs the ETA lies between the runs left (floor) and the cost left (ceiling) at the
    # measured rates: their geometric mean when they are within 4x, else only the floor.
    lines.clear()
    p = Progress(10, 2, lines.append, total_cost=100.0)
    p.update(0, 5, "easy half", wall=1.0, cost=10.0)
    assert "ETA > 1.0 s" in lines[0]  # floor 1 s, ceiling 9 s
    lines.clear()
    p = Progress(10, 2, lines.append, total_cost=40.0)
    p.update(0, 5, "easy half", wall=1.0, cost=10.0)
    assert "ETA 1.7 s" in lines[0]  # floor 1 s, ceiling 3 s
    # Loaded chunks alone give no rate; the first computed chunk gives one (chunk times exclude
    # compilation, which is timed apart), refined by later chunks.
    lines.clear()
    p = Progress(10, 4, lines.append)
    p.update(0, 2, "loaded")
    p.update(1, 2, "first", wall=4.0)
    p.update(2, 2, "second", wall=1.0)
    p.note("analyses of chunk 3")
    assert "ETA estimating" in lines[0]
    assert "ETA 12.0 s" in lines[1]
    assert "ETA 5.0 s" in lines[2] and lines[3].endswith("analyses of chunk 3")


# (runs, predicted cost, wall s) per chunk of two measured 200-run SSD sweeps (n = 8, d = 20, ε: 20 values
# on [1e-3, 10] resp. [1e-2, 10], α: 10 on [1e-3, 1], t1 = 100, stop 1e-8, 2 CPU devices), in plan order:
# the cost spans 200x, the walls 3x (auto) or rise 10x then fall (Tsit5, runs cut off at t1).
MEASURED_CHUNKS = {
    "auto": [(16, 36.4, 0.206), (16, 74.1, 0.206), (16, 115.1, 0.173), (16, 164.5, 0.173), (16, 228.6, 0.412),
             (16, 309.4, 0.412), (16, 380.4, 0.467), (16, 497.6, 0.467), (16, 666.4, 0.601), (16, 1217.8, 0.601),
             (16, 2596.1, 0.514), (16, 6461.4, 0.514), (8, 7363.5, 0.106)],
    "tsit5": [(16, 33.0, 0.281), (16, 60.2, 0.281), (16, 85.4, 2.174), (16, 125.3, 2.174), (16, 161.0, 2.83),
              (16, 227.5, 2.83), (16, 357.7, 1.779), (16, 646.0, 1.779), (16, 1157.4, 2.574), (16, 2041.6, 2.574),
              (16, 3867.3, 1.06), (16, 8379.0, 1.06), (8, 7638.5, 0.092)],
    # the cost model exact (wall = cost / 100) over a narrow spread of costs
    "proportional": [(16, c, c / 100) for c in (100.0, 120.0, 150.0, 180.0, 220.0, 260.0)],
    # the cost model useless (every chunk takes as long) over a narrow spread of costs
    "flat": [(16, c, 0.5) for c in (100.0, 120.0, 150.0, 180.0, 220.0, 260.0)],
}


@pytest.mark.parametrize("name", sorted(MEASURED_CHUNKS))
def test_eta_after_the_first_chunk_is_within_2x_of_the_truth_or_a_floor(name):
    """After the first computed chunk the ETA is a number within 2x of the time the remaining chunks
    took, or a floor below it; through the first half of the sweep a number within 2x or a floor below
    2x the truth (the hard chunks that t1 cuts short are cheaper than their predicted order): never
    10-25x the truth, as the cost-only ETA was (963 s, 447 s, 252 s for ~25 s of work)."""
    chunks = MEASURED_CHUNKS[name]
    lines = []
    p = Progress(sum(r for r, _, _ in chunks), len(chunks), lines.append, total_cost=sum(c for _, c, _ in chunks))
    for k, (runs, cost, wall) in enumerate(chunks[: (len(chunks) + 1) // 2]):
        p.update(k, runs, "", wall=wall, cost=cost)
        truth = sum(w for _, _, w in chunks[k + 1:])
        text = lines[-1].split("ETA ")[1].split(" s:")[0]
        if text.startswith("> "):
            assert float(text[2:]) <= truth * (1 if k == 0 else 2), (k, text, truth)
        else:
            assert truth / 2 <= float(text) <= truth * 2, (k, text, truth)
    if name in ("proportional", "flat"):  # a narrow bracket gives a number from the first chunk on
        assert not any("ETA >" in line for line in lines)


_DEVICES = """
import dataclasses, sys, warnings, numpy as np, jax
jax.config.update("jax_enable_x64", True)  # as a user's program must
import mdflow as md
from mdflow._execution import executor as _executor, plan as _plan
assert len(jax.devices()) == int(sys.argv[2]), jax.devices()
p = md.sparse_gaussian(10, 30, 3, seed=1)  # conftest's small_problem
pol = md.SolvePolicy(t1=1e4, num_ts=30, max_steps=100_000, stop_rel_residual=1e-7)  # conftest's canonical
flows = [md.make_flow("ssd", p, eps=e, alpha=a) for e in (0.03, 0.3, 3.0) for a in (0.01, 0.1)]
out = {}
for width, solver in ((1, "auto"), (2, "tsit5")):
    s = _executor.sweep(flows, p, dataclasses.replace(pol, solver=solver), chunk_size=2, vmap_width=width)
    for key in ("y_final", "ys", "loss", "rel_residual", "num_steps", "t_end"):
        out[f"{key}.{width}"] = getattr(s, key)
# Vmapped implicit chunks on several host devices deadlock XLA's CPU runtime: clamped to width 1.
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    s = _executor.sweep(flows, p, pol, chunk_size=2, vmap_width=2)
assert any("deadlock" in str(w.message) for w in caught), [str(w.message) for w in caught]
assert _plan.Layout.of(8, vmap_width=8).solver(pol, flows[0]) == "tsit5_rodas4"  # not vmapped here
assert np.array_equal(s.y_final, out["y_final.1"])
np.savez(sys.argv[1], **out)
"""


@pytest.mark.e2e
def test_one_and_four_devices_identical(tmp_path, problem):
    """Chunks of 2 on 4 devices (a subprocess) vs 1 device, sequential (width 1, auto) and vmapped
    (width 2, Tsit5); vmapped implicit chunks on several host devices fall back to width 1."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = tmp_path / "four.npz"
    subprocess.run([sys.executable, "-c", textwrap.dedent(_DEVICES), str(out), "4"], env=env, check=True,
                   timeout=300)
    mesh = _plan.make_mesh(jax.devices()[:1])
    with np.load(out) as four:
        for width, solver in ((1, "auto"), (2, "tsit5")):
            pol = policy(solver)  # as the subprocess's
            one = sweep(flows_for(problem), problem, pol, chunk_size=2, mesh=mesh, vmap_width=width)
            for key in ("y_final", "ys", "loss", "rel_residual", "num_steps", "t_end"):
                np.testing.assert_allclose(np.asarray(getattr(one, key)), four[f"{key}.{width}"], rtol=0,
                                           atol=1e-12, err_msg=f"{key}, width {width}")
            assert np.all(four[f"num_steps.{width}"] > 0)


def test_any_array_parameter_may_vary(problem, fresh_programs):
    """Frozen SSD over its magnitudes `a` and per-coordinate α vectors: one compiled function (the SSD
    chunks' own: frozen SSD is an `SSDFamily` member), and each member equals its own solve (the sweep
    is not limited to ε × α)."""
    pol = policy()
    rng = np.random.default_rng(0)
    flows = [md.make_flow("ssd_frozen", problem, eps=0.1, alpha=rng.uniform(0.01, 0.1, problem.d), a=a)
             for a in (0.0, 0.05, 0.5, 5.0)]
    before = _executor.num_programs()
    batched = sweep(flows, problem, pol, chunk_size=CHUNK, vmap_width=1)
    assert _executor.num_programs() - before == 1
    for i, flow in enumerate(flows):
        one = md.solve(flow, problem, pol)
        np.testing.assert_allclose(batched.y_final[i], np.asarray(one.y_final), rtol=0, atol=1e-12)
    # The magnitudes matter: the end points differ between a = 0 and a = 5.
    assert np.max(np.abs(batched.y_final[0] - batched.y_final[3])) > 1e-3


FAMILY = [("gf", None), ("ssd_frozen", 0.3), ("ssd", 0.3)]


def test_gf_frozen_and_ssd_share_one_compiled_program(problem, fresh_programs):
    """GF, frozen SSD and SSD are solved as `SSDFamily` members: chunks of all three kinds (same solver,
    shapes, save mode) build the chunk solve once, each run equals its own single solve bit for bit, and
    each member's field is its own flow's, bit for bit (the family is exact, not an approximation)."""
    pol, p = policy(), problem
    kinds = [[md.make_flow(kind, p, eps=eps, alpha=a) for a in (0.05, 0.2)] for kind, eps in FAMILY]
    before = _executor.num_programs()
    sols = [sweep(flows, p, pol, chunk_size=CHUNK, vmap_width=1) for flows in kinds]
    assert _executor.num_programs() - before == 1
    rng = np.random.default_rng(0)
    for flows, sol in zip(kinds, sols):
        for i, flow in enumerate(flows):
            one = md.solve(flow, p, pol)
            for key in ("y_final", "ys", "num_steps"):
                np.testing.assert_array_equal(getattr(sol, key)[i], np.asarray(getattr(one, key)), err_msg=key)
            y = jax.numpy.asarray(rng.uniform(-3.0, 0.0, flow.init(p).shape))
            np.testing.assert_array_equal(np.asarray(flow.integrand(p).vector_field(0.0, y, p)),
                                          np.asarray(flow.vector_field(0.0, y, p)))


@pytest.mark.slow
def test_family_members_solve_as_their_own_flows(problem):
    """Each family member's solve equals the solve of its own flow type (its own program), bit for bit."""
    pol, p = policy(), problem
    for kind, eps in FAMILY:
        flow = md.make_flow(kind, p, eps=eps, alpha=0.05)
        ref = _solve_one(flow, p, md.SolveControls.of(pol, p), solver_name=md.choose_solver(pol, flow),
                         max_steps=pol.max_steps, keep_states=True)
        one = md.solve(flow, p, pol)
        for key in ("y_final", "ys", "num_steps"):
            np.testing.assert_array_equal(np.asarray(getattr(one, key)), np.asarray(getattr(ref, key)), err_msg=key)
