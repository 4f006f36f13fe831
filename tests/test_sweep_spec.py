"""Sweep specs: every mistake is a SpecError that names its key path and the fix, found before
Ray starts; the shipped specs in sweeps/ are valid."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ray import tune
from ray.tune.execution.placement_groups import PlacementGroupFactory

from grokschedule.adapters.trainables.modular import modular_trainable
from grokschedule.app.spec import (
    REQUIRED,
    SAMPLERS,
    SECTIONS,
    ClusterView,
    SpecError,
    SweepSpec,
    TrialResources,
    check_fits,
    load_spec,
    parse_spec,
)
from grokschedule.app.sweep import sweep_main
from grokschedule.bench.replay_trainable import replay_trainable

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
CLUSTER_ENV = {
    "GROKSCHEDULE_STORAGE_PATH": "s3://bucket/runs",
    "MLFLOW_TRACKING_URI": "http://m:5000",
}


def spec(**sections: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "trainable": "modular",
        "search_space": {"p": 47, "weight_decay": {"grid": [0.0, 1.0]}},
        "scheduler": {"metric": "val_acc", "mode": "max", "max_t": 3000},
    }
    return {**base, **sections}


def problem(data: Any, env: dict[str, str] | None = None) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(data, source="s.yaml", env={} if env is None else env)
    return str(caught.value)


# -- the shipped specs ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["local.yaml", "multinode-test.yaml"])
def test_shipped_local_specs_are_valid(name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GROKSCHEDULE_STORAGE_PATH", str(tmp_path))
    loaded = load_spec(SWEEPS / name)
    assert loaded.trainable is modular_trainable
    assert loaded.storage_path == str(tmp_path)
    assert loaded.settings().root == tmp_path  # MLflow's sqlite store lives there


def test_h100_spec_takes_bucket_and_mlflow_server_from_the_environment() -> None:
    loaded = load_spec(SWEEPS / "h100.yaml", env=CLUSTER_ENV)
    assert loaded.storage_path == "s3://bucket/runs"
    assert loaded.tracking_uri == "http://m:5000"
    assert loaded.resources.bundles == ({"CPU": 8.0, "GPU": 8.0},)
    settings = loaded.settings()
    assert settings.storage_path == "s3://bucket/runs"
    assert isinstance(settings.resources, PlacementGroupFactory)
    with pytest.raises(SpecError) as caught:
        load_spec(SWEEPS / "h100.yaml", env={})
    message = str(caught.value)
    assert "storage_path: environment variable GROKSCHEDULE_STORAGE_PATH is not set" in message
    assert "mlflow.tracking_uri: environment variable MLFLOW_TRACKING_URI is not set" in message


def test_a_valid_spec_becomes_tune_objects() -> None:
    loaded = parse_spec(
        spec(
            search_space={
                "p": 47,
                "lr": {"loguniform": [1e-4, 1e-2]},
                "train_fraction": {"uniform": [0.3, 0.6]},
                "seed": {"randint": [0, 10]},
                "op": {"choice": ["add", "sub"]},
                "weight_decay": {"grid": [0.0, 1.0]},
            },
            num_samples=3,
            max_concurrent_trials=2,
            resources={"cpu": 1, "gpu_node": 1},
            failure={"max_failures": 0},
        ),
        env={},
        default_experiment="my-sweep",
    )
    space = loaded.param_space
    assert isinstance(space["lr"], tune.search.sample.Float)
    assert isinstance(space["seed"], tune.search.sample.Integer)
    assert isinstance(space["op"], tune.search.sample.Categorical)
    assert space["weight_decay"] == {"grid_search": [0.0, 1.0]}
    assert loaded.resources.bundles == ({"CPU": 1.0, "gpu_node": 1.0},)
    assert (loaded.num_samples, loaded.max_concurrent_trials, loaded.max_failures) == (3, 2, 0)
    assert loaded.experiment == "my-sweep"
    assert loaded.storage_path == str(Path("grokschedule_runs").resolve())


def test_import_path_trainable_and_nested_config() -> None:
    loaded = parse_spec(
        spec(
            trainable="grokschedule.bench.replay_trainable:replay_trainable",
            search_space={"curve_file": "c.json", "zero": {"stage": {"grid": [1, 2]}}},
        ),
        env={},
    )
    assert loaded.trainable is replay_trainable
    assert loaded.param_space["zero"] == {"stage": {"grid_search": [1, 2]}}


# -- one mistake, one message ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({**spec(), "schedular": {}}, "unknown key 'schedular' (did you mean 'scheduler'?)"),
        (
            spec(search_space={"lr": {"loguniform": [0.01, 0.001]}}),
            "search_space.lr.loguniform: empty range [0.01, 0.001] — lo must be < hi",
        ),
        (
            spec(search_space={"lr": {"loguniform": [0, 1]}}),
            "search_space.lr.loguniform: loguniform needs lo > 0",
        ),
        (
            spec(search_space={"lr": {"uniform": [1]}}),
            "search_space.lr.uniform: expected [lo, hi], got [1]",
        ),
        (
            spec(search_space={"seed": {"randint": [0.5, 3]}}),
            "search_space.seed.randint[0]: expected an integer",
        ),
        (
            spec(search_space={"lr": {"uniform": [0, float("nan")]}}),
            "search_space.lr.uniform[1]: expected a finite number",
        ),
        (
            spec(search_space={"lr": {"logunifrom": [1, 2]}}),
            "search_space.lr: unknown sampler 'logunifrom' (did you mean 'loguniform'?)",
        ),
        (
            spec(search_space={"lr": {"grid": [1], "x": 2}}),
            "search_space.lr: a sampler is a mapping with one key",
        ),
        (spec(search_space={"p": {"grid": []}}), "search_space.p.grid: expected a non-empty list"),
        (spec(search_space=[1, 2]), "search_space: expected a mapping"),
        (spec(num_samples="ten"), "num_samples: expected an integer, got 'ten' (str)"),
        (spec(num_samples=0), "num_samples: must be >= 1, got 0"),
        (
            spec(max_concurrent_trials=True),
            "max_concurrent_trials: expected an integer, got True (bool)",
        ),
        (spec(failure={"max_failures": -2}), "failure.max_failures: must be >= -1, got -2"),
        (
            spec(failure={"max_failure": 1}),
            "failure: unknown key 'max_failure' (did you mean 'max_failures'?)",
        ),
        (spec(storage_path=5), "storage_path: expected a non-empty string, got 5 (int)"),
        (
            spec(mlflow={"tracking_url": "x"}),
            "mlflow: unknown key 'tracking_url' (did you mean 'tracking_uri'?)",
        ),
        (
            spec(storage_path="s3://b/x"),
            "mlflow.tracking_uri: required when storage_path is a URI (s3://b/x)",
        ),
        # trainables
        (
            spec(trainable="modualr"),
            "trainable: unknown trainable 'modualr' — did you mean 'modular'?",
        ),
        (spec(trainable="no_such_pkg.mod:fn"), "trainable: cannot import 'no_such_pkg.mod'"),
        (
            spec(trainable="grokschedule.bench.replay_trainable:nope"),
            "trainable: 'grokschedule.bench.replay_trainable' has no function 'nope'",
        ),
        (
            spec(search_space={"wieght_decay": 1.0}),
            "search_space: unknown key 'wieght_decay' (did you mean 'weight_decay'?)",
        ),
        (spec(search_space={"p": {"grid": [47, 48]}}), "search_space.p.grid[1]: p must be a prime"),
        (spec(search_space={"lr": "fast"}), "search_space.lr: expected float, got 'fast' (str)"),
        (
            spec(search_space={"max_steps": 3000.0}),
            "search_space.max_steps: expected int, got 3000.0",
        ),
        (
            spec(search_space={"lr": {"uniform": [-1, 1]}}),
            "search_space.lr.uniform[0]: lr must be > 0",
        ),
        (
            spec(trainable="deepspeed", search_space={"zero_stage": {"grid": [2, 4]}}),
            "search_space.zero_stage.grid[1]: zero_stage must be one of (0, 1, 2, 3), got 4",
        ),
        (
            spec(trainable="replay", search_space={"curve": "a"}),
            "search_space: trainable 'replay' needs ['bank', 'index'] or ['curve', 'curve_file']",
        ),
        # resources
        (spec(resources={"CPU": -1}), "resources.CPU: must be >= 0, got -1"),
        (spec(resources={"GPU": "eight"}), "resources.GPU: expected a number, got 'eight' (str)"),
        (spec(resources={"CPU": 0}), "resources: a trial needs at least one resource > 0"),
        (
            spec(resources={"bundles": []}),
            "resources.bundles: expected a non-empty list of bundles",
        ),
        (
            spec(resources={"bundles": [{"CPU": 1}], "stratgy": "PACK"}),
            "resources: unknown key 'stratgy' (did you mean 'strategy'?)",
        ),
        (
            spec(resources={"bundles": [{"CPU": 1}], "strategy": "TIGHT"}),
            "resources.strategy: unknown strategy 'TIGHT'",
        ),
        (spec(resources={"bundles": [{"CPU": 1}, 4]}), "resources.bundles[1]: expected a mapping"),
        # scheduler: its signature, its types, and its own checks
        (
            spec(scheduler={"metric": "val_acc", "mode": "max", "max_tt": 1}),
            "scheduler: unknown key 'max_tt' (did you mean 'max_t'?)",
        ),
        (
            spec(scheduler={"metric": "val_acc", "mode": "max", "max_t": "long"}),
            "scheduler.max_t: expected float, got 'long' (str)",
        ),
        (
            spec(scheduler={"metric": "val_acc", "mode": "max", "val_loss": 3}),
            "scheduler.val_loss: expected str or null, got 3 (int)",
        ),
        (spec(scheduler={"mode": "max"}), "scheduler.metric: required"),
        (
            spec(scheduler={"metric": "val_acc", "mode": "maxx"}),
            "scheduler.mode: mode must be 'min' or 'max', got 'maxx'",
        ),
        (spec(scheduler={"metric": "val_acc", "mode": "max", "max_t": -5}), "scheduler"),
        (
            spec(scheduler={"metric": "val_acc", "mode": "max", "interventions": {"max_kicks": 0}}),
            "scheduler: max_kicks must be >= 1",
        ),
        # file-level
        ([1, 2], "a spec is a mapping of sections, got [1, 2] (list)"),
        ({"scheduler": spec()["scheduler"]}, "missing section 'trainable'"),
        (
            spec(storage_path="${NOPE}/x"),
            "storage_path: environment variable NOPE is not set — set it, or write "
            "${NOPE:-default}",
        ),
    ],
)
def test_mistakes_name_the_key_and_the_fix(data: Any, expected: str) -> None:
    message = problem(data)
    assert message.startswith("s.yaml: ")
    assert expected in message


def test_every_problem_is_reported_at_once() -> None:
    message = problem(spec(num_samples=0, resources={"CPU": -1}, schedular=1))
    assert message.startswith("s.yaml: 3 problems:")
    for part in ("unknown key 'schedular'", "num_samples: must be >= 1", "resources.CPU:"):
        assert part in message


def test_six_mistakes_in_three_sections_are_six_problems_in_one_dry_run(
    tmp_path: Path, capsys
) -> None:
    """Every section, every key of a section and every trainer field is checked, whatever
    else is wrong: one run of --dry-run lists all that needs fixing."""
    path = tmp_path / "six.yaml"
    path.write_text(
        "trainable: modular\n"
        "search_space:\n"
        "  p: 48\n"
        "  lr: -1.0e-3\n"
        "  weight_decay: {grid: []}\n"
        "scheduler:\n"
        "  metric: val_acc\n"
        "  mode: maximize\n"
        "  max_t: 0\n"
        "  grok_treshold: 0.9\n"
    )
    assert sweep_main([str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: 6 problems:" in err
    for expected in (
        "search_space.weight_decay.grid: expected a non-empty list of values, got [] (list)",
        "search_space.p: p must be a prime",
        "search_space.lr: lr must be > 0, got -0.001",
        "scheduler: unknown key 'grok_treshold' (did you mean 'grok_threshold'?)",
        "scheduler.mode: mode must be 'min' or 'max', got 'maximize'",
        "scheduler.max_t: max_t must be a positive number, got 0",
    ):
        assert expected in err


def test_every_bad_value_of_a_trainer_field_is_reported() -> None:
    message = problem(
        spec(search_space={"p": {"grid": [48, 47, 49]}, "lr": {"choice": [0.1, -1.0, 0.0]}})
    )
    assert message.startswith("s.yaml: 4 problems:")
    for path in ("p.grid[0]", "p.grid[2]", "lr.choice[1]", "lr.choice[2]"):
        assert f"search_space.{path}: " in message


def test_rules_across_trainer_fields_are_judged_on_values_trials_get() -> None:
    """DeepSpeed's batch must divide by micro-batch x workers: checking num_workers: 16 alone on
    the defaults (batch 64, micro 16) would reject the README's valid config."""
    readme = {"num_workers": 16, "batch_size": 256, "micro_batch_size": 4, "zero_stage": 3}
    assert parse_spec(spec(trainable="deepspeed", search_space=readme), env={})
    grid = {**readme, "num_workers": {"grid": [16, 48]}}
    message = problem(spec(trainable="deepspeed", search_space=grid))
    assert "search_space.num_workers.grid[1]: batch_size 256 is not divisible" in message
    both = {"batch_size": 96, "num_workers": 4}  # each fine alone, not together
    message = problem(spec(trainable="deepspeed", search_space=both))
    assert (
        "search_space: batch_size 96 is not divisible by micro_batch_size 16 × num_workers 4 = 64"
        in message
    )
    assert message.endswith("(with the first value of every key)")


def test_a_deepspeed_config_passes_through_as_written() -> None:
    # Passed as written, not read as a nested search space of its own.
    zero = {"stage": "auto", "reduce_bucket_size": 5e8, "overlap_comm": True}
    ds_config = {"zero_optimization": zero, "bf16": {"enabled": "auto"}}
    loaded = parse_spec(
        spec(trainable="deepspeed", search_space={"deepspeed_config": ds_config}), env={}
    )
    assert loaded.param_space["deepspeed_config"] == ds_config
    # A JSON that contradicts the trainer's own fields is a spec error naming both sides.
    contradicting = {"zero_optimization": {"stage": 3}}
    message = problem(spec(trainable="deepspeed", search_space={"deepspeed_config": contradicting}))
    assert "search_space.deepspeed_config" in message
    assert "zero_optimization.stage=3 vs zero_stage=" in message
    two = [{"steps_per_print": 10}, {"steps_per_print": 100}]  # a sampler over configs samples
    loaded = parse_spec(
        spec(trainable="deepspeed", search_space={"deepspeed_config": {"grid": two}}), env={}
    )
    assert loaded.param_space["deepspeed_config"] == {"grid_search": two}


def test_tunes_grid_search_spelling_is_a_grid() -> None:
    tune_spelling = {"lr": {"grid_search": [1e-3, 3e-3]}}
    loaded = parse_spec(spec(search_space=tune_spelling), env={})
    assert loaded.param_space["lr"] == {"grid_search": [1e-3, 3e-3]}
    assert parse_spec(spec(search_space={"lr": {"grid": [1e-3, 3e-3]}}), env={}).param_space == (
        loaded.param_space
    )
    message = problem(spec(search_space={"lr": {"grid_search": [1e-3, -1.0]}}))
    assert "search_space.lr.grid_search[1]: lr must be > 0" in message


def test_schema_flag_prints_a_json_schema_the_shipped_specs_satisfy(capsys) -> None:
    assert sweep_main(["--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    for path in sorted(SWEEPS.glob("*.yaml")):
        assert not list(validator.iter_errors(yaml.safe_load(path.read_text()))), path
    assert set(schema["required"]) == set(REQUIRED)
    assert set(schema["properties"]) == set(SECTIONS)
    bad = {**spec(), "schedular": {}}
    assert any("schedular" in e.message for e in validator.iter_errors(bad))
    wrong_mode = spec(scheduler={"metric": "val_acc", "mode": "maximize"})
    assert list(validator.iter_errors(wrong_mode))
    samplers = schema["properties"]["search_space"]["additionalProperties"]["anyOf"]
    assert {
        next(iter(schema["$defs"][s["$ref"].split("/")[-1]]["properties"]))
        for s in samplers
        if "$ref" in s
    } == set(SAMPLERS)


def test_environment_defaults_and_references() -> None:
    env = {"GROKSCHEDULE_STORAGE_PATH": "gs://b/r", "MLFLOW_TRACKING_URI": "http://m"}
    loaded = parse_spec(spec(mlflow={"tracking_uri": "${MLFLOW_TRACKING_URI}"}), env=env)
    assert (loaded.storage_path, loaded.tracking_uri) == ("gs://b/r", "http://m")
    loaded = parse_spec(spec(storage_path="${UNSET:-/tmp/x}"), env={})
    assert loaded.storage_path == str(Path("/tmp/x").resolve())


def test_yaml_reads_exponents_as_numbers_and_rejects_duplicate_keys(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec()) + "\n")
    text = path.read_text().replace("p: 47", "p: 47\n  lr: {loguniform: [1e-4, 1e-2]}")
    path.write_text(text)
    loaded = load_spec(path, env={})
    assert loaded.param_space["lr"].lower == 1e-4  # YAML 1.1 would have made '1e-4' a string
    assert loaded.experiment == "sweep"
    path.write_text(text + "num_samples: 1\nnum_samples: 2\n")
    with pytest.raises(SpecError, match=r"line \d+: duplicate key 'num_samples' — keep one"):
        load_spec(path, env={})
    path.write_text("trainable: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path, env={})
    with pytest.raises(SpecError, match="cannot read the spec"):
        load_spec(tmp_path / "missing.yaml")


def test_sweep_command_rejects_a_bad_spec_before_starting_ray(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**spec(), "schedular": {}}))
    assert sweep_main([str(path), "--dry-run"]) == 2
    assert "unknown key 'schedular' (did you mean 'scheduler'?)" in capsys.readouterr().err


def test_dry_run_without_a_cluster_checks_the_spec_alone(monkeypatch, capsys) -> None:
    monkeypatch.setenv("GROKSCHEDULE_STORAGE_PATH", "s3://bucket/runs")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://m:5000")
    assert sweep_main([str(SWEEPS / "h100.yaml"), "--dry-run", "--address", "local"]) == 0
    out = capsys.readouterr().out
    assert "per trial: {CPU: 8, GPU: 8}" in out
    assert "the spec is valid (no cluster to check its resources against)" in out


# -- fitting trials onto a cluster --------------------------------------------------------------
HEAD = {"CPU": 1.0, "memory": 1e10, "node:127.0.0.1": 1.0}
WORKER = {"CPU": 2.0, "gpu_node": 2.0, "memory": 1e10}


def test_a_trial_no_node_can_host_is_an_error() -> None:
    trial = TrialResources(({"CPU": 1.0, "gpu_node": 3.0},))
    with pytest.raises(SpecError) as caught:
        check_fits(trial, ClusterView(nodes=(HEAD, WORKER)))
    message = str(caught.value)
    assert "resources: no node can host {CPU: 1, gpu_node: 3}" in message
    assert "{CPU: 1}; {CPU: 2, gpu_node: 2}" in message  # the nodes, without memory noise
    assert (
        check_fits(TrialResources(({"CPU": 1.0, "gpu_node": 2.0},)), ClusterView((HEAD, WORKER)))
        is None
    )


def test_autoscaler_node_types_count_as_nodes() -> None:
    trial = TrialResources(({"CPU": 8.0, "GPU": 8.0},))
    h100 = {"CPU": 192.0, "GPU": 8.0}
    assert check_fits(trial, ClusterView(nodes=(HEAD,), node_types=(h100,))) is None
    warning = check_fits(trial, ClusterView(nodes=(HEAD,), opaque_autoscaler=True))
    assert warning is not None and "until the autoscaler adds one" in warning


def test_placement_groups_check_each_bundle_and_strict_pack_the_sum() -> None:
    two = TrialResources(({"CPU": 2.0, "gpu_node": 1.0}, {"CPU": 2.0, "gpu_node": 1.0}), "SPREAD")
    assert check_fits(two, ClusterView((HEAD, WORKER, WORKER))) is None
    packed = TrialResources(two.bundles, "STRICT_PACK")
    with pytest.raises(SpecError, match=r"resources: no node can host \{CPU: 4, gpu_node: 2\}"):
        check_fits(packed, ClusterView((HEAD, WORKER, WORKER)))
    with pytest.raises(SpecError, match=r"resources.bundles\[1\]: no node can host \{GPU: 1\}"):
        check_fits(TrialResources(({"CPU": 1.0}, {"GPU": 1.0})), ClusterView((HEAD, WORKER)))
    factory = parse_spec(
        spec(resources={"bundles": [{"CPU": 1}, {"gpu": 8}], "strategy": "spread"}), env={}
    ).resources.for_tune()
    assert factory.bundles == [{"CPU": 1.0}, {"GPU": 8.0}]
    assert factory.strategy == "SPREAD"


# -- property: any spec is either valid or a SpecError naming a section -------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
numbers = st.integers(-5, 10**400) | st.floats()
samplers = st.builds(
    lambda name, args: {name: args},
    st.sampled_from(["grid", "choice", "uniform", "loguniform", "randint", "logunifrom"]),
    st.lists(numbers | st.text(max_size=3), max_size=3),
)
space_keys = st.sampled_from(
    ["p", "lr", "weight_decay", "max_steps", "op", "batch_size", "seed", "wd"]
)
sections = {
    "trainable": st.sampled_from(
        [
            "modular",
            "replay",
            "modualr",
            "no_such_pkg.mod:fn",
            "grokschedule.bench.replay_trainable:nope",
            "",
        ]
    )
    | json_values,
    "search_space": st.dictionaries(space_keys, json_values | samplers | numbers, max_size=4)
    | json_values,
    "num_samples": numbers | json_values,
    "max_concurrent_trials": numbers | json_values,
    "resources": st.dictionaries(
        st.sampled_from(["CPU", "cpu", "GPU", "gpu_node"]), numbers | json_values, max_size=3
    )
    | st.fixed_dictionaries(
        {
            "bundles": st.lists(
                st.dictionaries(st.sampled_from(["CPU", "GPU"]), numbers, max_size=2), max_size=3
            )
        },
        optional={"strategy": st.sampled_from(["PACK", "strict_spread", "TIGHT"]) | json_values},
    )
    | json_values,
    "scheduler": st.fixed_dictionaries(
        {},
        optional={
            "metric": st.sampled_from(["val_acc", ""]) | json_values,
            "mode": st.sampled_from(["max", "min", "maxx"]) | json_values,
            "max_t": numbers | json_values,
            "grok_threshold": numbers,
            "patience_factor": numbers,
            "max_extension": numbers | st.none(),
            "val_loss": st.none() | st.text(max_size=4) | numbers,
            "phase_options": json_values,
            "interventions": st.booleans()
            | st.lists(st.sampled_from(["grokfast", "lr_multiply", "x"]))
            | json_values,
            "max_tt": json_values,
        },
    )
    | json_values,
    "storage_path": st.sampled_from(["runs", "s3://b/r", "${UNSET}", "a\x00b"]) | json_values,
    "mlflow": st.fixed_dictionaries(
        {}, optional={"tracking_uri": json_values, "experiment": json_values, "x": json_values}
    )
    | json_values,
    "failure": st.fixed_dictionaries({}, optional={"max_failures": numbers | json_values})
    | json_values,
    "schedular": json_values,
}


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid spec with some sections replaced by drawn values and some dropped, so that
    valid specs and each kind of mistake all come up."""
    names = sorted(sections)
    data = spec(resources={"CPU": 1}, storage_path="runs", failure={"max_failures": 1})
    for name in draw(st.sets(st.sampled_from(names), max_size=3)):
        data[name] = draw(sections[name])
    for name in draw(st.sets(st.sampled_from(names), max_size=2)):
        data.pop(name, None)
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=specs())
def test_any_spec_validates_or_names_its_section(data: dict[str, Any]) -> None:
    try:
        loaded = parse_spec(data, env={})
    except SpecError as e:
        assert e.problems
        for path, message in e.problems:
            root = re.split(r"[.\[]", path)[0]
            if root:
                assert root in SECTIONS, (path, message)
            else:  # whole-spec problems name the key: unknown or missing
                assert any(repr(key) in message for key in [*data, *REQUIRED]), message
        return
    assert isinstance(loaded, SweepSpec)
    loaded.settings()  # Tune's placement-group factory accepts what the spec accepted


@settings(max_examples=100, deadline=None)
@given(
    data=st.dictionaries(st.text(max_size=8) | st.integers(), json_values, max_size=5) | json_values
)
@example(data={"[key]": None})  # pydantic's own marker for a bad key, as a key
def test_arbitrary_data_is_never_another_exception(data: Any) -> None:
    with contextlib.suppress(SpecError):
        parse_spec(data, env={})
