"""Models, losses and weight decay from the config, and plugin flows (`flows.kinds` import paths): what
the config refuses before any work, what the records carry, and the worked plugin example of
docs/api.md (`docs/examples/tanh_sign.py`) against an independent scipy integration."""

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, tiny_config, toml_text, write_tiny_data

import mdflow
from mdflow._config import SCHEMA, from_dict

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
CLASSIFICATION = {"kind": "separable_gaussian", "loss": "logistic"}


def refused(match: str, **tables):
    with pytest.raises(mdflow.InputError, match=match):
        from_dict(tiny_config(**tables))


# --- config keys ---------------------------------------------------------------------------------


def test_defaults_are_todays_runs():
    """Unset, the new keys are today's model and loss; every run spec carries λ = 0, and the hash of a
    config that spells the defaults out is that of one that leaves them unset (stores keep their identity)."""
    config = from_dict(tiny_config())
    assert config.loss == "squared" and config.model() == mdflow.make_flow("gf", config.problem(), alpha=0.1).model
    assert config.model().params() == {"parametrization": "diagonal", "depth": 2}
    assert all(spec.get("weight_decay") == 0.0 for spec in config.run_specs())
    spelled = from_dict(tiny_config(problem={"loss": "squared"}, model={"parametrization": "diagonal", "depth": 2},
                                    grid={"weight_decay": [0.0]}))
    assert spelled.hash() == config.hash()
    for other in ({"problem": CLASSIFICATION, "solve": {"stop_rel_residual": None}}, {"model": {"depth": 3}},
                  {"model": {"parametrization": "linear"}}, {"grid": {"weight_decay": [0.0, 0.1]}}):
        raw = tiny_config(**other)
        raw["solve"] = {k: v for k, v in raw["solve"].items() if v is not None}
        assert from_dict(raw).hash() != config.hash(), other


def test_weight_decay_is_a_run_axis():
    config = from_dict(tiny_config(grid={"weight_decay": [0.0, 0.1]}))
    specs = config.run_specs()
    assert len(specs) == 2 * (1 + 2)  # (GF α) + (SSD ε × α), each × λ
    assert {spec.get("weight_decay") for spec in specs} == {0.0, 0.1}
    assert len({spec.key() for spec in specs}) == len(specs)
    flow = config.flow(specs[1], config.problem())
    assert float(flow.weight_decay) == specs[1].get("weight_decay")


def test_model_and_alpha_range():
    linear = from_dict(tiny_config(model={"parametrization": "linear"}, grid={"alpha": [0.0, 0.5]}))
    assert linear["model"]["depth"] == 1 and linear.model().params() == {"parametrization": "linear", "depth": 1}
    assert linear.alpha_values == [0.0, 0.5]  # the linear model may start at 0
    assert from_dict(tiny_config(model={"depth": 3})).model().depth == 3
    refused(r"grid\.alpha=0\.0: must be in", grid={"alpha": [0.0]})  # the diagonal network needs α > 0
    refused(r"model\.depth=2: the linear model has depth 1", model={"parametrization": "linear", "depth": 2})
    refused(r"model\.depth=1: the diagonal network needs depth >= 2", model={"depth": 1})
    refused(r"model\.parametrization='deep': expected one of", model={"parametrization": "deep"})
    refused(r"model\.width: unknown key", model={"width": 3})


def test_loss_and_stop_keys_are_checked_before_work():
    classification = {"problem": CLASSIFICATION, "solve": {"stop_rel_residual": None}}
    raw = tiny_config(**classification)
    del raw["solve"]["stop_rel_residual"]
    config = from_dict({**raw, "solve": {**raw["solve"], "stop_loss": 1e-3}})
    policy = config.solve_policy()
    assert policy.stop_loss == 1e-3 and policy.stop_rel_residual is None
    assert from_dict({**raw, "output": {"save": "final"}}).stop_rel_residual() is None  # END_POINT_STOP: squared only
    refused(r"solve\.stop_rel_residual=1e-06: the logistic loss never interpolates", problem=CLASSIFICATION)
    refused(r"solve\.stop_loss=0\.001: the squared loss stops at interpolation", solve={"stop_loss": 1e-3})
    refused(r"problem\.loss='logistic': needs labels ±1, but problem\.kind = 'sparse_gaussian'",
            problem={"loss": "logistic"})
    refused(r"problem\.loss='hinge': expected one of", problem={"loss": "hinge"})
    with pytest.raises(mdflow.InputError, match=r"analysis\.kkt=true: .* logistic loss"):
        from_dict({**raw, "analysis": {"kkt": True}})
    refused(r"problem\.signs: does not apply to problem\.kind = 'separable_gaussian'",
            problem={"kind": "separable_gaussian", "signs": True})


def test_separable_gaussian():
    problem = mdflow.separable_gaussian(20, 50, 4, seed=3)
    X, y, w = (np.asarray(a) for a in (problem.X, problem.y, problem.w_star))
    assert problem.loss_function.name == "logistic" and set(np.unique(y)) <= {-1.0, 1.0}
    np.testing.assert_array_equal(y, np.where(X @ w >= 0, 1.0, -1.0))  # the teacher separates the data
    assert np.count_nonzero(w) == 4 and np.allclose(np.abs(w[w != 0]), 0.5)
    assert mdflow.separable_gaussian(20, 50, 4, seed=3, loss="exponential").loss_function.name == "exponential"
    with pytest.raises(mdflow.InputError, match=r"n=0: must be in"):
        mdflow.separable_gaussian(0, 50, 4)
    with pytest.raises(mdflow.InputError, match=r"problem\.loss='hinge'"):
        mdflow.separable_gaussian(20, 50, 4, loss="hinge")
    config = from_dict(tiny_config(problem={**CLASSIFICATION, "seed": 3}, solve={"stop_rel_residual": None}))
    made = config.problem(5)
    assert made.loss_function.name == "logistic" and made.n == TINY["problem"]["n"]
    np.testing.assert_array_equal(made.X, mdflow.separable_gaussian(10, 30, 3, seed=5).X)


def test_file_labels_must_suit_the_loss(tmp_path):
    """A data file with real labels under a classification loss: `InputError` naming the file and the loss,
    exit 2 from the CLI, before anything is solved."""
    write_tiny_data(tmp_path)
    raw = tiny_config(problem={"kind": "file", "path": "data.npz", "loss": "logistic"})
    del raw["problem"]["n"], raw["problem"]["d"], raw["problem"]["k"], raw["solve"]["stop_rel_residual"]
    config_path = tmp_path / "c.toml"
    config_path.write_text(toml_text(raw))
    with pytest.raises(mdflow.InputError, match=r"problem\.path='.*data\.npz': the logistic loss needs labels"):
        mdflow.load_config(config_path).problem()
    from mdflow.cli import main

    assert main(["run", str(config_path), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out" / "summary.json").exists()


def test_duals_refused_where_the_flow_has_none():
    refused(r"flow 'gf' \(.*grid\.weight_decay=0\.1\) has no dual to check against: GF with weight decay",
            flows={"kinds": ["gf"], "duals": True}, grid={"weight_decay": [0.0, 0.1]})
    refused(r"flow 'ssd' \(model\.parametrization='linear'.*\) has no dual .*: SSD on the linear model",
            flows={"kinds": ["ssd"], "duals": True}, model={"parametrization": "linear"})
    from_dict(tiny_config(flows={"kinds": ["gf", "ssd_frozen"], "duals": True}))  # depth 2, squared: exact pairs


# --- several models in one config --------------------------------------------------------------------

SEVERAL = {"parametrization": ["linear", "diagonal"], "depth": [2, 3]}


def test_several_models_expand_the_grid_on_each():
    """Every run of the one-model grid on each model, in order, its key ending in the model's label; the
    flow of a run is on its model; `run_axes` gains `model` only with several."""
    from mdflow._execution.run import run_axes

    one, several = from_dict(tiny_config()), from_dict(tiny_config(model=SEVERAL))
    assert list(several.models()) == ["linear", "diagonal-D2", "diagonal-D3"]
    assert [type(m) for m in several.models().values()] == [mdflow.Linear, mdflow.Diagonal, mdflow.Diagonal]
    base, specs = one.run_specs(), several.run_specs()
    assert all(spec.model is None and spec.plan_kind == spec.flow for spec in base)
    assert base[1].key() == "ssd|eps=0.1|alpha=0.1|seed=0|weight_decay=0.0"  # one model: today's keys
    assert [(s.flow, s.params, s.seed, s.model) for s in specs] == [
        (s.flow, s.params, s.seed, label) for label in several.models() for s in base]
    assert [s.key() for s in specs] == [s.key() + f"|model={label}" for label in several.models() for s in base]
    assert specs[1].plan_kind == "ssd|model=linear"
    problem = several.problem()
    for spec in specs:
        assert several.flow(spec, problem).model == several.model(spec.model)
    assert several.model("diagonal-D3").depth == 3 and one.model() == mdflow.Diagonal(2)
    with pytest.raises(mdflow.InputError, match=r"model: the config has several models"):
        several.model()
    assert run_axes(one) == ["flow", "seed", "eps", "alpha"]
    assert run_axes(several) == ["flow", "seed", "eps", "alpha", "model"]
    depths = from_dict(tiny_config(model={"depth": [3, 2]}))  # one parametrization, several depths
    assert list(depths.models()) == ["diagonal-D3", "diagonal-D2"]


def test_a_list_of_one_model_is_todays_config():
    """`[model]` lists of one value: the one-model config, hash (store identity) and runs included."""
    for scalar, listed in (({}, {"parametrization": ["diagonal"], "depth": [2]}),
                           ({"depth": 3}, {"depth": [3]}),
                           ({"parametrization": "linear"}, {"parametrization": ["linear"]})):
        a, b = from_dict(tiny_config(model=scalar)), from_dict(tiny_config(model=listed))
        assert a.hash() == b.hash() and a.to_json() == b.to_json() and a.run_specs() == b.run_specs(), listed


@pytest.mark.parametrize("model, grid, match", [
    ({"parametrization": []}, {}, r"model\.parametrization=\[\]: needs at least one"),
    ({"parametrization": ["linear", "linear"]}, {}, r"model\.parametrization=\['linear', 'linear'\]: duplicate"),
    ({"parametrization": ["linear", "deep"]}, {}, r"model\.parametrization\[1\]='deep': expected one of"),
    ({"parametrization": ["linear", 3]}, {}, r"model\.parametrization\[1\]=3: expected one of"),
    ({"parametrization": "linear", "depth": [2, 3]}, {}, r"model\.depth=\[2, 3\]: the linear model has depth 1"),
    ({"parametrization": ["linear"], "depth": [2]}, {}, r"model\.depth=\[2\]: the linear model has depth 1"),
    ({"depth": []}, {}, r"model\.depth=\[\]: needs at least one depth"),
    ({"depth": [2, 2]}, {}, r"model\.depth: duplicate value 2"),
    ({"depth": [2, 1]}, {}, r"model\.depth\[1\]=1: the diagonal network needs depth >= 2"),
    ({"depth": [2, 2.5]}, {}, r"model\.depth\[1\]=2\.5: expected an integer"),
    ({"depth": [2, True]}, {}, r"model\.depth\[1\]=True: expected an integer"),
    ({"depth": [2, 101]}, {}, r"model\.depth\[1\]=101: must be in \[1, 100\]"),
    ({"parametrization": ["linear", "diagonal"], "depth": 1}, {}, r"model\.depth=1: the diagonal network needs"),
    ({"depth": "2"}, {}, r"model\.depth='2': expected int or list"),
    # α = 0 suits the linear model, not the diagonal network: the error names the model
    ({"parametrization": ["linear", "diagonal"]}, {"alpha": [0.0, 0.1]},
     r"grid\.alpha=0\.0: must be in .* \(for the model 'diagonal-D2'\)"),
])
def test_bad_model_lists_are_refused(model, grid, match):
    refused(match, model=model, grid=grid)


def test_several_models_alpha_and_duals_are_checked_on_each():
    assert from_dict(tiny_config(model={"parametrization": ["linear"]}, grid={"alpha": [0.0]})).alpha_values == [0.0]
    # GF has a dual on both models; SSD none on the linear one, named with its model
    from_dict(tiny_config(model={"parametrization": ["linear", "diagonal"]}, flows={"kinds": ["gf"], "duals": True}))
    refused(r"flow 'ssd' \(model\.parametrization='linear', model\.depth=1, .*\) has no dual .*: SSD on the linear",
            model={"parametrization": ["diagonal", "linear"]}, flows={"kinds": ["ssd"], "duals": True})


def test_chunks_never_mix_models():
    """The plan (no solve) groups by model too: every chunk's runs share seed, flow and model, and the
    chunk names its group (`RunSpec.plan_kind`, in the manifest and progress lines)."""
    from mdflow._execution.plan import Layout
    from mdflow._execution.run import _plan

    config = from_dict(tiny_config(model={"parametrization": ["linear", "diagonal"]}, sweep={"chunk_size": 4}))
    specs, plan = _plan(config, config.solve_policy(), False, Layout.of(4))
    assert [c.flow for c in plan.chunks] == ["gf|model=linear", "ssd|model=linear", "gf|model=diagonal-D2",
                                             "ssd|model=diagonal-D2"]
    for chunk in plan.chunks:
        assert {specs[i].plan_kind for i in chunk.runs} == {chunk.flow}
        assert {plan.flows[i].model for i in chunk.runs} == {config.model(specs[chunk.runs[0]].model)}
    assert sorted(i for c in plan.chunks for i in c.runs) == list(range(len(specs)))


def test_run_labels_name_the_model_where_a_folder_has_several():
    from mdflow._plotting.style import run_label

    rec = {"flow": "ssd", "eps": 0.01, "alpha": 0.1, "model": {"parametrization": "linear", "depth": 1}}
    assert run_label(rec) == "SSD, ε = 10⁻², α = 0.1"
    assert run_label({**rec, "model_label": "linear"}) == "SSD on linear, ε = 10⁻², α = 0.1"


# --- plugins ---------------------------------------------------------------------------------------


def _module(tmp_path, monkeypatch, name: str, body: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_plugin_entries_that_name_no_flow(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    refused(r"flows\.kinds\[0\]='no_such_module:X': cannot import", flows={"kinds": ["no_such_module:X"]})
    refused(r"flows\.kinds\[1\]='tanh_sign:Nope': module 'tanh_sign' has no 'Nope'",
            flows={"kinds": ["gf", "tanh_sign:Nope"]})
    refused(r"'tanh_sign:jnp': jnp is not a primal flow", flows={"kinds": ["tanh_sign:jnp"]})
    refused(r"'mdflow:AbstractPrimalFlow': .* not a concrete flow: missing kind, label, axes, local_field",
            flows={"kinds": ["mdflow:AbstractPrimalFlow"]})
    refused(r"'mdflow._flows:GF': the same flow as 'gf'", flows={"kinds": ["gf", "mdflow._flows:GF"]})
    refused(r"flows\.kinds\[0\]='tanh': unknown flow", flows={"kinds": ["tanh"]})
    # A module whose flow misses a declaration does not import: the class fails as it is created.
    name = _module(tmp_path, monkeypatch, "no_label", """
        import mdflow
        class NoLabel(mdflow.GF):
            kind = "no_label"
            label = None
        class NoKind(mdflow.AbstractPrimalFlow):
            label = "x"
            axes = ("alpha",)
            def local_field(self, t, y, g):
                return -g * y
    """)
    refused(rf"'{name}:NoKind': cannot import '{name}' \(TypeError: flow class {name}\.NoLabel: missing declaration",
            flows={"kinds": [f"{name}:NoKind"]})


def test_a_flow_class_missing_a_declaration_fails_naming_it():
    with pytest.raises(TypeError, match=r"flow class .*NoAxes: missing declaration\(s\) axes"):
        class NoAxes(mdflow.AbstractPrimalFlow):
            kind = "no_axes"
            label = "no axes"

            def local_field(self, t, y, g):
                return -g * y

    with pytest.raises(TypeError, match=r"NoKind: missing declaration\(s\) kind, label"):
        class NoKind(mdflow.AbstractPrimalFlow):
            axes = ("alpha",)

            def local_field(self, t, y, g):
                return -g * y

    class AbstractMine(mdflow.AbstractPrimalFlow):  # abstract (equinox's naming): no declarations needed
        pass

    class StillAbstract(mdflow.AbstractPrimalFlow):  # `local_field` left abstract
        label = "x"

    with pytest.raises(TypeError, match="local_field"):
        StillAbstract(0.1)


def test_plugin_axes_are_grid_keys(tmp_path, monkeypatch):
    name = _module(tmp_path, monkeypatch, "with_beta", """
        from typing import ClassVar
        import jax.numpy as jnp
        import mdflow
        class Beta(mdflow.AbstractPrimalFlow):
            beta: object
            kind: ClassVar[str] = "beta"
            label: ClassVar[str] = "β flow"
            axes: ClassVar[tuple] = ("alpha", "beta")
            def local_field(self, t, y, g):
                return -self.beta * self.model.jacobian(y, True) * g
    """)
    config = from_dict(tiny_config(flows={"kinds": ["gf", f"{name}:Beta"]}, grid={"beta": [1.0, 2.0]}))
    specs = [s for s in config.run_specs() if s.flow == f"{name}:Beta"]
    assert [s.get("beta") for s in specs] == [1.0, 2.0]
    assert float(config.flow(specs[1], config.problem()).beta) == 2.0
    from mdflow._execution.run import run_axes

    assert run_axes(config) == ["flow", "seed", "eps", "alpha", "beta"]
    refused(r"grid\.beta: flow 'with_beta:Beta' needs it", flows={"kinds": [f"{name}:Beta"]})
    refused(r"grid\.beta: unknown key", grid={"beta": 1.0})  # no flow of flows.kinds takes β
    refused(r"grid\.beta\[1\]='x': expected a number", flows={"kinds": [f"{name}:Beta"]}, grid={"beta": [1.0, "x"]})


# --- the worked example (docs/api.md, "Your own flow") ---------------------------------------------


def _tanh_reference(problem, eps, alpha, ts):
    """w(t) of `θ̇ = −tanh((∂w/∂θ)·g/ε)` on the depth-2 network, in NumPy, integrated by scipy's Radau."""
    from scipy.integrate import solve_ivp

    X, y = np.asarray(problem.X), np.asarray(problem.y)
    d = X.shape[1]

    def field(t, z):
        u, v = z[:d], z[d:]
        g = problem.scale * (X.T @ (X @ (u * u - v * v) - y))
        return np.concatenate([-np.tanh(2 * u * g / eps), np.tanh(2 * v * g / eps)])

    z0 = np.full(2 * d, alpha)
    sol = solve_ivp(field, (0.0, ts[-1]), z0, method="Radau", t_eval=ts, rtol=1e-12, atol=1e-14)
    assert sol.success
    u, v = sol.y[:d], sol.y[d:]
    return (u * u - v * v).T


def test_tanh_sign_example_runs_from_its_config(tmp_path, monkeypatch):
    """docs/examples/tanh_sign.toml through `mdflow run` (in-process), read back with `mdflow.load`: its
    runs match an independent scipy integration of the flow's NumPy field, the records carry the model,
    loss and weight decay, and `mdflow.sweep` from Python gives the same trajectories."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    from tanh_sign import TanhSign

    from mdflow.cli import main

    out = tmp_path / "out"
    assert main(["run", str(EXAMPLES / "tanh_sign.toml"), "--out", str(out)]) == 0
    ds = mdflow.load(out)
    summary = json.loads((out / "summary.json").read_text())
    assert all(r["model"] == {"parametrization": "diagonal", "depth": 2} and r["loss"] == "squared"
               and r["weight_decay"] == 0.0 for r in summary["runs"])
    assert set(ds["loss_function"].values) == {"squared"} and set(ds["model.depth"].values) == {2}
    config = mdflow.load_config(EXAMPLES / "tanh_sign.toml")
    problem, ts = config.problem(), ds["t"].values
    tanh = ds.sel(flow="tanh_sign:TanhSign")
    assert tanh.sizes["run"] == 2 and set(tanh["status"].values) == {"ok"}
    for eps in (0.1, 1.0):
        w = tanh.sel(eps=eps)["w"].values.squeeze()
        np.testing.assert_allclose(w, _tanh_reference(problem, eps, 0.1, ts), rtol=0, atol=1e-6)
    # From Python: the same flows, one sweep (the config's chunk program).
    flows = [TanhSign(0.1, eps) for eps in (0.1, 1.0)]
    sol = mdflow.sweep(flows, problem, config.solve_policy(), chunk_size=2)
    for j, eps in enumerate((0.1, 1.0)):
        np.testing.assert_allclose(sol.ws[j], tanh.sel(eps=eps)["w"].values.squeeze(), rtol=0, atol=1e-12)


def test_example_config_is_in_the_schema():
    """The example config uses only schema keys (its plugin import path aside)."""
    import tomllib

    raw = tomllib.loads((EXAMPLES / "tanh_sign.toml").read_text())
    assert all(key in SCHEMA[table] for table, keys in raw.items() for key in keys)
    assert "tanh_sign:TanhSign" in raw["flows"]["kinds"]
    assert "tanh_sign" not in sys.modules or sys.modules["tanh_sign"].TanhSign.kind == "tanh_sign"


def test_weight_decay_runs_are_labelled(tmp_path):
    """A swept `grid.weight_decay`: each record carries its λ, `mdflow.load` indexes by it, and λ > 0
    changes the run (TINY's programs: λ is traced). The runs with λ > 0, and only they, record
    `weight_decay_kkt` (`λ‖θ‖∞` and the box's KKT residual, docs/math.md §9), labelled in `mdflow.load`;
    their interpolation stop is out of reach (decay keeps the end point off the interpolating set): none
    of them ends `ok`."""
    raw = tiny_config(grid={"weight_decay": [0.0, 0.5]})
    records, _ = mdflow.execute(from_dict(raw), tmp_path / "out", log=lambda _: None)
    assert sorted({r["weight_decay"] for r in records}) == [0.0, 0.5]
    ds = mdflow.load(tmp_path / "out")
    assert "weight_decay" in ds.indexes["run"].names
    w = {lam: ds.sel(flow="gf", weight_decay=lam)["w_final"].values for lam in (0.0, 0.5)}
    assert np.linalg.norm(w[0.5]) < np.linalg.norm(w[0.0])  # decay shrinks the end point
    for r in records:
        assert ("weight_decay_kkt" in r) == (r["weight_decay"] > 0), r
        if r["weight_decay"] > 0:
            assert not r["stopped"] and r["status"] != "ok", r  # never claims to have interpolated
            assert 0 < r["weight_decay_kkt"]["linf"] < 1 and r["weight_decay_kkt"]["residual"] >= 0, r
    decayed = ds.sel(weight_decay=0.5)
    for key in ("linf", "residual"):
        assert np.all(np.isnan(ds.sel(weight_decay=0.0)[f"weight_decay_kkt.{key}"].values))
        assert np.all(np.isfinite(decayed[f"weight_decay_kkt.{key}"].values))
