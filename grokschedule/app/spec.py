"""Sweep specs: one YAML file describes a sweep, and all of it is checked before anything starts.

A typo found after a cluster has scaled up to 8-GPU nodes costs GPU-minutes and a round trip, so
``load_spec`` reports every problem at once, each with the key path that holds it and what to
write instead. The format, with defaults::

    trainable: modular                  # a name in TRAINABLES, or package.module:function
    search_space:                       # the trial config; fixed values and samplers
      p: 97
      weight_decay: {grid: [0.0, 1.0]}  # every value (trials = grid product x num_samples)
      lr: {loguniform: [1.0e-4, 1.0e-2]}
      op: {choice: [add, sub]}          # also uniform: [lo, hi], randint: [lo, hi) (hi excluded)
    num_samples: 1
    max_concurrent_trials: null         # null: as many as the cluster fits
    resources: {CPU: 1}                 # per trial, custom resources too ({gpu_node: 1}); or a
                                        # placement group: {bundles: [{CPU: 1}, {GPU: 8}],
                                        #                   strategy: PACK}
    scheduler: {metric: val_acc, mode: max, max_t: 3000}   # GrokScheduler keyword arguments
    storage_path: ${GROKSCHEDULE_STORAGE_PATH:-grokschedule_runs}   # local path or s3://, gs://
    mlflow: {tracking_uri: null, experiment: <spec file stem>}    # null: sqlite under storage_path
    failure: {max_failures: 1}          # restarts per trial from its last checkpoint (-1: forever)

Any string may hold ``${VAR}`` or ``${VAR:-default}``: cluster specs take bucket and MLflow server
from the nodes' environment instead of a file in git.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ray import tune
from ray.tune.execution.placement_groups import PlacementGroupFactory

from grokschedule.adapters import GrokScheduler
from grokschedule.app.runner import SweepSettings
from grokschedule.training.modular.trainer import TrainConfig

SECTIONS = (
    "trainable",
    "search_space",
    "num_samples",
    "max_concurrent_trials",
    "resources",
    "scheduler",
    "storage_path",
    "mlflow",
    "failure",
)
REQUIRED = ("trainable", "scheduler")
SAMPLERS = ("grid", "choice", "uniform", "loguniform", "randint")
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
STORAGE_ENV = "GROKSCHEDULE_STORAGE_PATH"
DEFAULT_STORAGE = "grokschedule_runs"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class SpecError(ValueError):
    """A spec that cannot run. ``problems`` holds ``(key path, what is wrong and the fix)``."""

    def __init__(self, problems: Sequence[tuple[str, str]], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        lines = [f"{path}: {message}" if path else message for path, message in self.problems]
        text = lines[0] if len(lines) == 1 else f"{len(lines)} problems:\n  " + "\n  ".join(lines)
        super().__init__(f"{source}: {text}" if source else text)


def _error(path: str, message: str) -> SpecError:
    return SpecError([(path, message)])


# -- trainables --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainableKind:
    """A trainable a spec may name. ``config_types`` and ``check`` catch config mistakes (typos,
    wrong types, values the trainer rejects) on the driver, before any trial is scheduled."""

    target: str  # "module:function"; imported only when a spec names it
    config_types: Mapping[str, Any] | None = None  # keys it reads and their types; None: unchecked
    required: tuple[frozenset[str], ...] = ()  # it needs all keys of one of these sets
    check: Callable[[Mapping[str, Any]], object] | None = None  # raises ValueError on a bad config


def _check_modular(config: Mapping[str, Any]) -> object:
    return TrainConfig.from_mapping(config).task  # ModularTask checks op, p (prime), fraction


def _check_deepspeed(config: Mapping[str, Any]) -> object:
    from grokschedule.training.deepspeed.config import (
        TrainerConfig,  # keeps deepspeed off the import path
    )

    return TrainerConfig.from_mapping(config)  # ZeRO stage, batch divisibility, precision


TRAINABLES: dict[str, TrainableKind] = {
    "modular": TrainableKind(
        "grokschedule.adapters.trainables.modular:modular_trainable",
        config_types={
            **typing.get_type_hints(TrainConfig),
            # read by modular_trainable itself, not by TrainConfig
            "checkpoint_every": int,
            "torch_threads": int,
            "control": bool,
            "control_poll_every": int,
        },
        check=_check_modular,
    ),
    "replay": TrainableKind(
        "grokschedule.bench.replay_trainable:replay_trainable",
        config_types={
            "bank": str,
            "index": int,
            "curve_file": str,
            "curve": str,
            "delay_s": float,
            "checkpoint_every": int,
        },
        required=(frozenset({"bank", "index"}), frozenset({"curve_file", "curve"})),
    ),
    # Trainer and task keys share one flat config, so keys are not type-checked here.
    "deepspeed": TrainableKind(
        "grokschedule.adapters.trainables.deepspeed:deepspeed_trainable", check=_check_deepspeed
    ),
}


# -- the spec ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialResources:
    """What one trial holds: one bundle, or several (a placement group) for multi-node trials."""

    bundles: tuple[dict[str, float], ...]
    strategy: str = "PACK"

    def for_tune(self) -> PlacementGroupFactory:
        return PlacementGroupFactory([dict(b) for b in self.bundles], strategy=self.strategy)


@dataclass(frozen=True)
class SweepSpec:
    """A checked spec, typed: what ``run_sweep`` needs, with nothing left to fail on its shape
    once the cluster is up."""

    source: str
    trainable_name: str
    trainable: Callable[[dict[str, Any]], None]
    param_space: dict[str, Any]  # with ray.tune search-space objects
    scheduler: dict[str, Any]  # GrokScheduler keyword arguments
    num_samples: int = 1
    max_concurrent_trials: int | None = None
    resources: TrialResources = field(default_factory=lambda: TrialResources(({"CPU": 1.0},)))
    storage_path: str = DEFAULT_STORAGE  # absolute local path, or a URI (s3://, gs://)
    tracking_uri: str | None = None  # None: sqlite under storage_path
    experiment: str = "grokschedule-sweep"
    max_failures: int = 1

    @property
    def storage_is_uri(self) -> bool:
        return "://" in self.storage_path

    def settings(self) -> SweepSettings:
        """The runner's settings: a local storage_path is the root that also holds the MLflow
        sqlite store (as in the demo); a URI goes to Tune as is."""
        root = Path(DEFAULT_STORAGE if self.storage_is_uri else self.storage_path)
        return SweepSettings(
            param_space=self.param_space,
            scheduler=self.scheduler,
            trainable=self.trainable,
            root=root,
            experiment=self.experiment,
            num_samples=self.num_samples,
            max_concurrent_trials=self.max_concurrent_trials,
            resources=self.resources.for_tune(),
            tracking_uri=self.tracking_uri,
            storage_path=self.storage_path if self.storage_is_uri else None,
            max_failures=self.max_failures,
        )


def load_spec(path: str | Path, env: Mapping[str, str] | None = None) -> SweepSpec:
    """Read and check a spec file; every problem raises one ``SpecError`` naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError([("", f"cannot read the spec: {e.strerror or e}")], str(path)) from e
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except SpecError as e:
        raise SpecError(e.problems, str(path)) from None
    except yaml.YAMLError as e:
        raise SpecError([("", f"not valid YAML: {e}")], str(path)) from None
    return parse_spec(data, source=str(path), env=env, default_experiment=path.stem)


def parse_spec(
    data: Any,
    source: str = "<spec>",
    env: Mapping[str, str] | None = None,
    default_experiment: str = "grokschedule-sweep",
) -> SweepSpec:
    """Check an already-loaded spec; ``env`` (default ``os.environ``) fills ``${VAR}``."""
    env = os.environ if env is None else env
    if not isinstance(data, Mapping):
        raise SpecError([("", f"a spec is a mapping of sections, got {_show(data)}")], source)
    problems: list[tuple[str, str]] = []
    data = _interpolate(data, "", env, problems)
    if problems:
        raise SpecError(problems, source)
    for key in data:
        if key not in SECTIONS:
            problems.extend(_unknown_key("", key, SECTIONS).problems)
    problems.extend(("", f"missing section {k!r}") for k in REQUIRED if k not in data)
    parsed: dict[str, Any] = {}

    def section(name: str, parse: Callable[[Any, str], Any]) -> None:
        if name in data:
            try:
                parsed[name] = parse(data[name], name)
            except SpecError as e:
                problems.extend(e.problems)

    section("trainable", _trainable)
    section("search_space", _search_space)
    section("num_samples", lambda v, p: _int(v, p, minimum=1))
    section("max_concurrent_trials", lambda v, p: None if v is None else _int(v, p, minimum=1))
    section("resources", _resources)
    section("scheduler", _scheduler)
    section("storage_path", _string)
    section("mlflow", _mlflow)
    section("failure", _failure)
    space_ok = "search_space" in parsed or "search_space" not in data
    if "trainable" in parsed and parsed["trainable"][2] is not None and space_ok:
        name, _, kind = parsed["trainable"]
        try:
            _check_config(kind, name, parsed.get("search_space", ({}, {}))[1])
        except SpecError as e:
            problems.extend(e.problems)
    storage = parsed.get("storage_path") or env.get(STORAGE_ENV) or DEFAULT_STORAGE
    try:
        storage = _storage(storage)
    except SpecError as e:
        problems.extend(e.problems)
    mlflow_section = parsed.get("mlflow", {})
    if "://" in storage and mlflow_section.get("tracking_uri") is None:
        problems.append(
            (
                "mlflow.tracking_uri",
                f"required when storage_path is a URI ({storage}): the default sqlite store "
                "would sit on the driver's disk — set a server, e.g. ${MLFLOW_TRACKING_URI}",
            )
        )
    if problems:
        raise SpecError(problems, source)
    name, trainable, _ = parsed["trainable"]
    space, _candidates = parsed.get("search_space", ({}, {}))
    return SweepSpec(
        source=source,
        trainable_name=name,
        trainable=trainable,
        param_space=space,
        scheduler=parsed["scheduler"],
        num_samples=parsed.get("num_samples", 1),
        max_concurrent_trials=parsed.get("max_concurrent_trials"),
        resources=parsed.get("resources", TrialResources(({"CPU": 1.0},))),
        storage_path=storage,
        tracking_uri=mlflow_section.get("tracking_uri"),
        experiment=mlflow_section.get("experiment") or default_experiment,
        max_failures=parsed.get("failure", 1),
    )


# -- sections ----------------------------------------------------------------------------------
def _trainable(value: Any, path: str) -> tuple[str, Callable[..., Any], TrainableKind | None]:
    name = _string(value, path)
    kind = TRAINABLES.get(name)
    if kind is None and not _IMPORT_PATH.match(name):
        close = difflib.get_close_matches(name, list(TRAINABLES), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise _error(
            path,
            f"unknown trainable {name!r} — {hint}built in: {', '.join(TRAINABLES)}; "
            "or an import path package.module:function",
        )
    module_name, _, attr = (kind.target if kind else name).partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise _error(path, f"cannot import {module_name!r}: {e}") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise _error(path, f"{module_name!r} has no function {attr!r}")
    return name, function, kind


def _search_space(value: Any, path: str) -> tuple[dict[str, Any], dict[str, list[tuple[str, Any]]]]:
    """The Tune param space, and per top-level key the values trials may get (each with its
    key path), so a trainable's own check can name the exact grid entry it rejects."""
    space = _mapping(value, path)
    out: dict[str, Any] = {}
    candidates: dict[str, list[tuple[str, Any]]] = {}
    for key, item in space.items():
        out[key], candidates[key] = _domain(item, f"{path}.{key}")
    return out, candidates


def _domain(item: Any, path: str) -> tuple[Any, list[tuple[str, Any]]]:
    if not isinstance(item, Mapping):
        return item, [(path, item)]
    keys = list(item)
    if len(keys) == 1 and keys[0] in SAMPLERS:
        name = keys[0]
        return _sampler(name, item[name], f"{path}.{name}")
    if any(k in SAMPLERS for k in keys):
        raise _error(
            path,
            f"a sampler is a mapping with one key, got {keys} — e.g. {{grid: [1, 2]}}; "
            "put other settings under their own keys",
        )
    if len(keys) == 1 and (close := difflib.get_close_matches(str(keys[0]), SAMPLERS, 1, 0.75)):
        raise _error(path, f"unknown sampler {keys[0]!r} (did you mean {close[0]!r}?)")
    nested, _ = _search_space(item, path)  # a nested config, e.g. a DeepSpeed section
    return nested, [(path, item)]


def _sampler(name: str, args: Any, path: str) -> tuple[Any, list[tuple[str, Any]]]:
    if name in ("grid", "choice"):
        if not isinstance(args, list) or not args:
            raise _error(path, f"expected a non-empty list of values, got {_show(args)}")
        values = [(f"{path}[{i}]", v) for i, v in enumerate(args)]
        return (tune.grid_search(args) if name == "grid" else tune.choice(args)), values
    integer = name == "randint"
    if not isinstance(args, list) or len(args) != 2:
        raise _error(path, f"expected [lo, hi], got {_show(args)}")
    lo, hi = (
        _int(v, f"{path}[{i}]") if integer else _number(v, f"{path}[{i}]")
        for i, v in enumerate(args)
    )
    if not lo < hi:
        raise _error(path, f"empty range [{lo}, {hi}] — lo must be < hi")
    if name == "loguniform" and lo <= 0:
        raise _error(path, f"loguniform needs lo > 0, got {lo} — use uniform for ranges from 0")
    if name == "uniform":
        return tune.uniform(lo, hi), [(f"{path}[0]", lo), (f"{path}[1]", hi)]
    if name == "loguniform":
        return tune.loguniform(lo, hi), [(f"{path}[0]", lo), (f"{path}[1]", hi)]
    return tune.randint(lo, hi), [(f"{path}[0]", lo), (f"{path}[1]", hi - 1)]


def _check_config(
    kind: TrainableKind, name: str, candidates: Mapping[str, list[tuple[str, Any]]]
) -> None:
    """Each value a trial may get, alone on the trainer's defaults, then the first of each."""
    if kind.config_types is not None:
        for key in candidates:
            if key not in kind.config_types:
                raise _unknown_key("search_space", key, sorted(kind.config_types), f"{name} reads")
    if kind.required and not any(keys <= set(candidates) for keys in kind.required):
        needs = " or ".join(str(sorted(keys)) for keys in kind.required)
        raise _error("search_space", f"trainable {name!r} needs {needs}")
    for key, values in candidates.items():
        expected = (kind.config_types or {}).get(key, Any)
        for path, value in values:
            if not _type_ok(value, expected):
                raise _error(path, f"expected {_type_name(expected)}, got {_show(value)}")
            if kind.check is not None:
                try:
                    kind.check({key: value})
                except (ValueError, TypeError) as e:
                    raise _error(path, str(e)) from None
    if kind.check is not None:
        try:
            kind.check({key: values[0][1] for key, values in candidates.items()})
        except (ValueError, TypeError) as e:
            raise _error("search_space", f"{e} (with the first value of every key)") from None


def _resources(value: Any, path: str) -> TrialResources:
    spec = _mapping(value, path)
    if "bundles" not in spec:
        return TrialResources((_bundle(spec, path),))
    for key in spec:
        if key not in ("bundles", "strategy"):
            raise _unknown_key(path, key, ["bundles", "strategy"])
    bundles = spec["bundles"]
    if not isinstance(bundles, list) or not bundles:
        raise _error(
            f"{path}.bundles", f"expected a non-empty list of bundles, got {_show(bundles)}"
        )
    strategy = _string(spec.get("strategy", "PACK"), f"{path}.strategy").upper()
    if strategy not in STRATEGIES:
        raise _error(f"{path}.strategy", f"unknown strategy {strategy!r}; one of {STRATEGIES}")
    parsed = tuple(
        _bundle(_mapping(b, f"{path}.bundles[{i}]"), f"{path}.bundles[{i}]")
        for i, b in enumerate(bundles)
    )
    return TrialResources(parsed, strategy)


def _bundle(spec: Mapping[str, Any], path: str) -> dict[str, float]:
    """Resource name -> amount; ``cpu``/``gpu`` as Ray spells them, custom names as written."""
    bundle: dict[str, float] = {}
    for key, amount in spec.items():
        name = {"cpu": "CPU", "gpu": "GPU"}.get(key, key)
        number = _number(amount, f"{path}.{key}")
        if number < 0:
            raise _error(f"{path}.{key}", f"must be >= 0, got {amount}")
        bundle[name] = bundle.get(name, 0.0) + float(number)
    if not any(bundle.values()):
        raise _error(path, "a trial needs at least one resource > 0, e.g. {CPU: 1}")
    return bundle


def _scheduler(value: Any, path: str) -> dict[str, Any]:
    """GrokScheduler's own keyword arguments, checked against its signature and then by building
    it once, so its ValueErrors surface here rather than on the cluster."""
    kwargs = dict(_mapping(value, path))
    parameters = [p for p in inspect.signature(GrokScheduler).parameters if p != "self"]
    hints = typing.get_type_hints(GrokScheduler.__init__)
    for key, arg in kwargs.items():
        if key not in parameters:
            raise _unknown_key(path, key, parameters)
        if not _type_ok(arg, hints.get(key, Any)):
            raise _error(f"{path}.{key}", f"expected {_type_name(hints[key])}, got {_show(arg)}")
    for key in ("metric", "mode"):
        if kwargs.get(key) is None:
            raise _error(f"{path}.{key}", "required (the sweep has no other place to set it)")
    try:
        GrokScheduler(**kwargs)
    except (ValueError, TypeError, KeyError) as e:
        first = str(e).split(" ", 1)[0]
        raise _error(f"{path}.{first}" if first in kwargs else path, str(e)) from None
    return kwargs


def _storage(value: str) -> str:
    """A URI as written; a local path made absolute, as Tune requires and so that the printed
    ``mlflow ui`` command works from any directory."""
    if "://" in value:
        return value
    try:
        return str(Path(value).expanduser().resolve())
    except (ValueError, OSError) as e:
        raise _error("storage_path", f"not a usable path {value!r}: {e}") from None


def _mlflow(value: Any, path: str) -> dict[str, Any]:
    spec = _mapping(value, path)
    out: dict[str, Any] = {}
    for key, item in spec.items():
        if key not in ("tracking_uri", "experiment"):
            raise _unknown_key(path, key, ["tracking_uri", "experiment"])
        out[key] = None if item is None else _string(item, f"{path}.{key}")
    return out


def _failure(value: Any, path: str) -> int:
    spec = _mapping(value, path)
    for key in spec:
        if key != "max_failures":
            raise _unknown_key(path, key, ["max_failures"])
    return _int(spec.get("max_failures", 1), f"{path}.max_failures", minimum=-1)


# -- cluster fit -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterView:
    """The node shapes a cluster has or can add, as seen from the driver."""

    nodes: tuple[Mapping[str, float], ...]  # alive nodes' total resources
    node_types: tuple[Mapping[str, float], ...] = ()  # shapes an autoscaler reports it can add
    opaque_autoscaler: bool = False  # an autoscaler runs that does not report its shapes


def check_fits(resources: TrialResources, cluster: ClusterView) -> str | None:
    """Raise ``SpecError`` when no node shape can ever host a trial (the sweep would wait
    forever); return a warning instead when an autoscaler that hides its shapes may add one."""
    shapes = [*cluster.nodes, *cluster.node_types]
    needs = [
        ("resources" if len(resources.bundles) == 1 else f"resources.bundles[{i}]", b)
        for i, b in enumerate(resources.bundles)
    ]
    if resources.strategy == "STRICT_PACK" and len(resources.bundles) > 1:
        total: dict[str, float] = {}
        for bundle in resources.bundles:
            for key, amount in bundle.items():
                total[key] = total.get(key, 0.0) + amount
        needs = [("resources", total)]
    for path, need in needs:
        if any(_fits(need, shape) for shape in shapes):
            continue
        keys = sorted({"CPU", "GPU", *need})
        seen = "; ".join(_show_resources(s, keys) for s in shapes) or "none"
        if cluster.opaque_autoscaler:
            return (
                f"{path}: no node has {_show_resources(need)} now (nodes: {seen}); trials wait "
                "until the autoscaler adds one — make sure a node type in its config has it"
            )
        raise _error(
            path,
            f"no node can host {_show_resources(need)} — the cluster's nodes have: {seen}. "
            "Ask for less, or add a node (or autoscaler node type) with these resources",
        )
    return None


def _fits(need: Mapping[str, float], shape: Mapping[str, float]) -> bool:
    return all(shape.get(key, 0.0) >= amount for key, amount in need.items() if amount > 0)


# -- helpers -----------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a number (YAML 1.2; YAML 1.1 makes it a string) and
    rejects duplicate keys (YAML 1.1 silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # super() raises its own error for these
            if key in seen:
                line = key_node.start_mark.line + 1
                raise _error("", f"line {line}: duplicate key {key!r} — keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _interpolate(
    value: Any, path: str, env: Mapping[str, str], problems: list[tuple[str, str]]
) -> Any:
    """``${VAR}`` / ``${VAR:-default}`` in every string; unset variables go to ``problems``."""
    if isinstance(value, str):

        def lookup(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is None:
                fix = f"set it, or write ${{{name}:-default}}"
                problems.append((path, f"environment variable {name} is not set — {fix}"))
            return default or ""

        return _ENV_REF.sub(lookup, value)
    if isinstance(value, Mapping):
        return {k: _interpolate(v, _join(path, k), env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", env, problems) for i, v in enumerate(value)]
    return value


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _unknown_key(path: str, key: Any, allowed: Sequence[str], what: str = "") -> SpecError:
    close = difflib.get_close_matches(str(key), list(allowed), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"{what or 'known'}: {', '.join(allowed)}"
    return _error(path, f"unknown key {key!r} ({hint})")


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _error(path, f"expected a mapping (key: value), got {_show(value)}")
    for key in value:
        if not isinstance(key, str):
            raise _error(path, f"keys must be strings, got {_show(key)} — quote it")
    return value


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise _error(path, f"expected a non-empty string, got {_show(value)}")
    return value


def _int(value: Any, path: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _error(path, f"expected an integer, got {_show(value)}")
    if minimum is not None and value < minimum:
        raise _error(path, f"must be >= {minimum}, got {value}")
    return value


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _error(path, f"expected a number, got {_show(value)}")
    if not abs(value) <= sys.float_info.max:  # NaN, ±inf, and ints no float can hold
        raise _error(path, f"expected a finite number, got {_show(value)}")
    return value


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a simple annotation (scalars, unions, list[X], Mapping)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arm) for arm in typing.get_args(hint))
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        return isinstance(value, Mapping)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    if origin is not None:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _show(value: Any) -> str:
    text = repr(value)
    return f"{text[:60] + '…' if len(text) > 60 else text} ({type(value).__name__})"


def _show_resources(resources: Mapping[str, float], keys: Sequence[str] | None = None) -> str:
    """``{CPU: 2, gpu_node: 1}``; with ``keys``, only those (a node's memory in bytes and its
    node:IP marker say nothing about why a request does not fit)."""
    shown = {k: v for k, v in resources.items() if (keys is None or k in keys) and v}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(shown.items())) + "}"


__all__ = [
    "TRAINABLES",
    "ClusterView",
    "SpecError",
    "SweepSpec",
    "TrainableKind",
    "TrialResources",
    "check_fits",
    "load_spec",
    "parse_spec",
]
