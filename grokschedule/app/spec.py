"""Sweep specs: one YAML file describes a sweep, and all of it is checked before anything starts.

A typo found after a cluster has scaled up to 8-GPU nodes costs GPU-minutes and a round trip, so
``load_spec`` reports every problem at once — in every section, every key of a section, and every
value a trial may get (checked by the trainer's own config class) — each with the key path that
holds it and what to write instead. The file's shape is the pydantic model ``SpecFile``;
``grokschedule sweep --schema`` prints its JSON Schema for editors. The format, with defaults::

    trainable: modular                  # a name in TRAINABLES, or package.module:function
    search_space:                       # the trial config; fixed values and samplers
      p: 97
      weight_decay: {grid: [0.0, 1.0]}  # every value (trials = grid product x num_samples);
                                        # Tune's spelling {grid_search: [0.0, 1.0]} works too
      lr: {loguniform: [1.0e-4, 1.0e-2]}
      op: {choice: [add, sub]}          # also uniform: [lo, hi], randint: [lo, hi) (hi excluded)
    num_samples: 1
    max_concurrent_trials: null         # null: as many as the cluster fits
    resources: {CPU: 1}                 # per trial, custom resources too ({gpu_node: 1}); or a
                                        # placement group: {bundles: [{CPU: 1}, {GPU: 8}],
                                        #                   strategy: PACK}
    scheduler: {metric: val_acc, mode: max, max_t: 3000}   # GrokScheduler keyword arguments;
                                        # metric and mode go to tune.TuneConfig
    storage_path: ${GROKSCHEDULE_STORAGE_PATH:-grokschedule_runs}   # local path or s3://, gs://
    mlflow: {tracking_uri: null, experiment: <spec file stem>}    # null: sqlite under storage_path
    failure: {max_failures: 1}          # restarts per trial from its last checkpoint (-1: forever)

Any string may hold ``${VAR}`` or ``${VAR:-default}``: cluster specs take bucket and MLflow server
from the nodes' environment instead of a file in git.
"""

from __future__ import annotations

import difflib
import functools
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
from typing import Annotated, Any, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from ray import tune
from ray.tune.execution.placement_groups import PlacementGroupFactory

from grokschedule.adapters import GrokScheduler
from grokschedule.app.runner import SweepSettings
from grokschedule.training.modular.trainer import TrainConfig

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
STORAGE_ENV = "GROKSCHEDULE_STORAGE_PATH"
DEFAULT_STORAGE = "grokschedule_runs"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
# A search-space value that is a mapping with one of these keys is a sampler: its type, and what
# it means (also the JSON Schema editors show).
_SAMPLER_TYPES: dict[str, tuple[Any, str]] = {
    "grid": (list[Any], "every value: trials = product of the grids x num_samples"),
    "grid_search": (list[Any], "Tune's own spelling of grid"),
    "choice": (list[Any], "one value at random per trial"),
    "uniform": (tuple[float, float], "[lo, hi], uniform"),
    "loguniform": (tuple[float, float], "[lo, hi] with lo > 0, uniform in log space"),
    "randint": (tuple[int, int], "[lo, hi): an integer, hi excluded"),
}
SAMPLERS = tuple(_SAMPLER_TYPES)

Loc = tuple[str | int, ...]  # where a problem is, relative to the value being validated


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
    verbatim: frozenset[str] = frozenset()  # keys whose mapping goes to it as written, not a
    # nested search space (e.g. a DeepSpeed JSON config); a one-key sampler still samples


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
        "grokschedule.adapters.trainables.deepspeed:deepspeed_trainable",
        check=_check_deepspeed,
        verbatim=frozenset({"deepspeed_config"}),
    ),
}


def _import_trainable(name: str) -> Callable[[dict[str, Any]], None]:
    kind = TRAINABLES.get(name)
    if kind is None and not _IMPORT_PATH.match(name):
        close = difflib.get_close_matches(name, list(TRAINABLES), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise _fail(
            f"unknown trainable {name!r} — {hint}built in: {', '.join(TRAINABLES)}; "
            "or an import path package.module:function"
        )
    module_name, _, attr = (kind.target if kind else name).partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise _fail(f"cannot import {module_name!r}: {e}") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise _fail(f"{module_name!r} has no function {attr!r}")
    return typing.cast(Callable[[dict[str, Any]], None], function)


# -- the file's shape: pydantic models ---------------------------------------------------------
def _fail(message: str) -> PydanticCustomError:
    """A problem, in the spec's own words, for pydantic to collect with the others."""
    return PydanticCustomError("spec", "{message}", {"message": message})


def _failures(title: str, problems: Sequence[tuple[Loc, str]], value: Any) -> ValidationError:
    """Several problems from one validator (pydantic prefixes each ``Loc`` with its own)."""
    details = [InitErrorDetails(type=_fail(m), loc=loc, input=value) for loc, m in problems]
    return ValidationError.from_exception_data(title, details)


class _Section(BaseModel):
    """Strict: values keep the types YAML gave them (no "3" for 3, no 3.0 for an int, no true
    for 1), and a key the section does not have is an error, not ignored."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


NonEmpty = Annotated[str, Field(min_length=1)]


def _bundle(bundle: dict[str, float]) -> dict[str, float]:
    """``cpu``/``gpu`` as Ray spells them, custom names as written; a trial must hold something."""
    out: dict[str, float] = {}
    for key, amount in bundle.items():
        name = {"cpu": "CPU", "gpu": "GPU"}.get(key, key)
        out[name] = out.get(name, 0.0) + amount
    if not any(out.values()):
        raise _fail("a trial needs at least one resource > 0, e.g. {CPU: 1}")
    return out


Bundle = Annotated[
    dict[str, Annotated[float, Field(ge=0)]],
    AfterValidator(_bundle),
    Field(description="resource name -> amount: CPU, GPU, memory or a custom resource"),
]
_BUNDLE = TypeAdapter(Bundle, config=ConfigDict(strict=True, allow_inf_nan=False))


class PlacementGroupSection(_Section):
    """One trial on several bundles (a Ray placement group), e.g. one bundle per node."""

    bundles: list[Bundle] = Field(min_length=1)
    strategy: str = Field("PACK", description=f"one of {', '.join(STRATEGIES)} (any case)")

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value.upper() not in STRATEGIES:
            raise _fail(f"unknown strategy {value.upper()!r}; one of {STRATEGIES}")
        return value.upper()


class MlflowSection(_Section):
    tracking_uri: NonEmpty | None = Field(
        None, description="an MLflow server; null: a sqlite store under storage_path"
    )
    experiment: NonEmpty | None = Field(None, description="default: the spec file's name")


class FailureSection(_Section):
    max_failures: int = Field(
        1, ge=-1, description="restarts per trial from its last checkpoint; -1: without end"
    )


_NOT_IN_SPECS = ("kick_config_change",)  # a Python function: set it in code, not in YAML


class _SchedulerChecks(_Section):
    """Names and types come from GrokScheduler's signature (``SchedulerSection``); then
    GrokScheduler itself checks the arguments that passed, so its ValueErrors surface here
    rather than on the cluster."""

    @model_validator(mode="wrap")
    @classmethod
    def _grokscheduler_accepts(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        errors: list[Any] = []
        section = None
        try:
            section = handler(data)
        except ValidationError as e:
            if not isinstance(data, Mapping):
                raise
            errors = e.errors(include_url=False)
        typed = {
            key: value
            for key, value in data.items()
            if key in cls.model_fields and all(err["loc"][:1] != (key,) for err in errors)
        }
        each = {key: [((key,), value)] for key, value in typed.items()}
        found, together = _check_each(lambda args: GrokScheduler(**args), each)
        messages = [message for _, message in found] + ([together] if together else [])
        for message in messages:
            first = message.split(" ", 1)[0]  # GrokScheduler's messages start with the argument
            loc: Loc = (first,) if first in data else ()
            errors.append(InitErrorDetails(type=_fail(message), loc=loc, input=data))
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors) from None
        return section


def _scheduler_fields() -> dict[str, Any]:
    hints = typing.get_type_hints(GrokScheduler.__init__)
    fields: dict[str, Any] = {
        "metric": (NonEmpty, Field(description="the metric to optimize; goes to tune.TuneConfig")),
        "mode": (
            str,
            Field(
                description="max or min; goes to tune.TuneConfig",
                json_schema_extra={"enum": ["max", "min"]},
            ),
        ),
    }
    for name, parameter in inspect.signature(GrokScheduler).parameters.items():
        if name not in fields and name not in _NOT_IN_SPECS:
            fields[name] = (hints[name], parameter.default)
    return fields


SchedulerSection = create_model(
    "SchedulerSection",
    __base__=_SchedulerChecks,
    __doc__="GrokScheduler's keyword arguments, checked against its signature and by building it.",
    **_scheduler_fields(),
)

_SAMPLER_SCHEMAS = tuple(
    create_model(
        f"{name.title().replace('_', '')}Sampler",
        __config__=ConfigDict(extra="forbid"),
        **{name: (kind, Field(description=doc))},
    )
    for name, (kind, doc) in _SAMPLER_TYPES.items()
)
# For the JSON Schema only: a sampler, or any value (fixed, or a nested config).
SearchValue = Union[(*_SAMPLER_SCHEMAS, Any)]


class SpecFile(_Section):
    """A sweep spec file as written; ``grokschedule sweep --schema`` prints its JSON Schema."""

    model_config = ConfigDict(title="grokschedule sweep spec")

    trainable: NonEmpty = Field(
        description="a built-in trainable, or an import path package.module:function",
        json_schema_extra={
            "anyOf": [{"enum": list(TRAINABLES)}, {"pattern": _IMPORT_PATH.pattern}]
        },
    )
    search_space: dict[str, Any] = Field(
        default_factory=dict,
        validate_default=True,
        description="the trial config: fixed values, samplers ({grid: [...]}, {grid_search: "
        "[...]}, {choice: [...]}, {uniform: [lo, hi]}, {loguniform: [lo, hi]}, {randint: [lo, "
        "hi]}) and nested configs",
    )
    num_samples: int = Field(1, ge=1, description="samples of the search space (x grid product)")
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="null: as many as the cluster fits"
    )
    resources: Bundle | PlacementGroupSection = Field(
        default_factory=lambda: {"CPU": 1.0},
        description="per trial: one bundle ({CPU: 1, gpu_node: 1}) or a placement group",
    )
    scheduler: SchedulerSection  # type: ignore[valid-type]
    storage_path: NonEmpty | None = Field(
        None,
        validate_default=True,
        description=f"a local path or s3://, gs://; null: ${STORAGE_ENV}, else {DEFAULT_STORAGE}",
    )
    mlflow: MlflowSection = Field(default_factory=MlflowSection, validate_default=True)
    failure: FailureSection = Field(default_factory=FailureSection)

    @field_validator("trainable")
    @classmethod
    def _importable(cls, name: str) -> str:
        _import_trainable(name)
        return name

    @field_validator("search_space", mode="plain", json_schema_input_type=dict[str, SearchValue])
    @classmethod
    def _tune_space(cls, value: Any, info: ValidationInfo) -> dict[str, Any]:
        """Samplers become Tune's search-space objects; with a built-in trainable, each value a
        trial may get is also checked by the trainer's own config class."""
        name = info.data.get("trainable")
        kind = TRAINABLES.get(name) if name else None
        problems: list[tuple[Loc, str]] = []
        read = _read_space(value, (), problems, kind.verbatim if kind else frozenset())
        if read is not None and kind is not None:
            problems += _check_config(kind, str(name), value, read[1], clean=not problems)
        if problems or read is None:
            raise _failures("search_space", problems, value)
        return read[0]

    @field_validator("resources", mode="wrap")
    @classmethod
    def _bundle_or_group(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """A mapping with ``bundles`` is a placement group, any other a single bundle (so each
        gets its own errors, not a union's)."""
        if isinstance(value, Mapping) and "bundles" in value:
            return PlacementGroupSection.model_validate(value)
        return _BUNDLE.validate_python(value)

    @field_validator("storage_path")
    @classmethod
    def _absolute(cls, value: str | None, info: ValidationInfo) -> str:
        """A URI as written; a local path made absolute, as Tune requires and so that the
        printed ``mlflow ui`` command works from any directory."""
        env = (info.context or {}).get("env", os.environ)
        path = value or env.get(STORAGE_ENV) or DEFAULT_STORAGE
        if "://" in path:
            return str(path)
        try:
            return str(Path(path).expanduser().resolve())
        except (ValueError, OSError) as e:
            raise _fail(f"not a usable path {path!r}: {e}") from None

    @field_validator("mlflow")
    @classmethod
    def _server_for_remote_storage(cls, section: MlflowSection, info: ValidationInfo) -> Any:
        storage = info.data.get("storage_path")
        if storage and "://" in storage and section.tracking_uri is None:
            message = (
                f"required when storage_path is a URI ({storage}): the default sqlite store "
                "would sit on the driver's disk — set a server, e.g. ${MLFLOW_TRACKING_URI}"
            )
            raise _failures("mlflow", [(("tracking_uri",), message)], section)
        return section


SECTIONS = tuple(SpecFile.model_fields)
REQUIRED = tuple(name for name, info in SpecFile.model_fields.items() if info.is_required())


def spec_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file, for editors (YAML language servers read it)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **SpecFile.model_json_schema(),
    }


# -- the checked spec ---------------------------------------------------------------------------
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
    scheduler: dict[str, Any]  # GrokScheduler's arguments; the runner gives metric, mode to Tune
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
    unset: list[tuple[str, str]] = []
    data = _interpolate(data, "", env, unset)
    try:
        spec = SpecFile.model_validate(data, context={"env": env})
    except ValidationError as e:
        # An unset variable also makes its value wrong (""): say it once, as the variable.
        problems = [p for p in _problems(e, data) if not any(_under(p[0], q) for q, _ in unset)]
        raise SpecError([*unset, *problems], source) from None
    if unset:
        raise SpecError(unset, source)
    resources = spec.resources
    return SweepSpec(
        source=source,
        trainable_name=spec.trainable,
        trainable=_import_trainable(spec.trainable),
        param_space=spec.search_space,
        # As written: the model hands floats for ints (max_t: 3000 -> 3000.0), GrokScheduler
        # and the MLflow params read better with what the user wrote.
        scheduler=dict(data["scheduler"]),
        num_samples=spec.num_samples,
        max_concurrent_trials=spec.max_concurrent_trials,
        resources=(
            TrialResources(tuple(resources.bundles), resources.strategy)
            if isinstance(resources, PlacementGroupSection)
            else TrialResources((resources,))
        ),
        storage_path=str(spec.storage_path),
        tracking_uri=spec.mlflow.tracking_uri,
        experiment=spec.mlflow.experiment or default_experiment,
        max_failures=spec.failure.max_failures,
    )


# -- the search space: samplers, and the trainer's own checks -----------------------------------
def _read_space(
    value: Any, loc: Loc, problems: list[tuple[Loc, str]], verbatim: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], dict[str, list[tuple[Loc, Any]]]] | None:
    """The Tune param space, and per key the values trials may get (each with its ``Loc``, so a
    trainer check names the exact grid entry it rejects). A key whose value is broken is left
    out of both; its problems are in ``problems``."""
    if not isinstance(value, Mapping):
        problems.append((loc, f"expected a mapping (key: value), got {_show(value)}"))
        return None
    space: dict[str, Any] = {}
    candidates: dict[str, list[tuple[Loc, Any]]] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            problems.append((loc, f"keys must be strings, got {_show(key)} — quote it"))
            continue
        read = _domain(item, (*loc, key), problems, key in verbatim)
        if read is not None:
            space[key], candidates[key] = read
    return space, candidates


def _domain(
    item: Any, loc: Loc, problems: list[tuple[Loc, str]], verbatim: bool
) -> tuple[Any, list[tuple[Loc, Any]]] | None:
    if not isinstance(item, Mapping):
        return item, [(loc, item)]
    keys = list(item)
    if len(keys) == 1 and keys[0] in SAMPLERS:
        return _sampler(keys[0], item[keys[0]], (*loc, keys[0]), problems)
    if verbatim:
        return item, [(loc, item)]
    if any(k in SAMPLERS for k in keys):
        problems.append(
            (
                loc,
                f"a sampler is a mapping with one key, got {keys} — e.g. {{grid: [1, 2]}}; "
                "put other settings under their own keys",
            )
        )
        return None
    if len(keys) == 1 and (close := difflib.get_close_matches(str(keys[0]), SAMPLERS, 1, 0.75)):
        problems.append((loc, f"unknown sampler {keys[0]!r} (did you mean {close[0]!r}?)"))
        return None
    before = len(problems)
    nested = _read_space(item, loc, problems)  # a nested config, e.g. a DeepSpeed section
    if nested is None or len(problems) > before:
        return None
    return nested[0], [(loc, item)]


def _sampler(
    name: str, args: Any, loc: Loc, problems: list[tuple[Loc, str]]
) -> tuple[Any, list[tuple[Loc, Any]]] | None:
    if name in ("grid", "grid_search", "choice"):
        if not isinstance(args, list) or not args:
            problems.append((loc, f"expected a non-empty list of values, got {_show(args)}"))
            return None
        values = [((*loc, i), v) for i, v in enumerate(args)]
        return (tune.choice(args) if name == "choice" else tune.grid_search(args)), values
    if not isinstance(args, list) or len(args) != 2:
        problems.append((loc, f"expected [lo, hi], got {_show(args)}"))
        return None
    bad = [
        ((*loc, i), message)
        for i, v in enumerate(args)
        if (message := (_integer if name == "randint" else _number)(v))
    ]
    if bad:
        problems.extend(bad)
        return None
    lo, hi = args
    if not lo < hi:
        problems.append((loc, f"empty range [{lo}, {hi}] — lo must be < hi"))
        return None
    if name == "loguniform" and lo <= 0:
        problems.append((loc, f"loguniform needs lo > 0, got {lo} — use uniform for ranges from 0"))
        return None
    ends = [((*loc, 0), lo), ((*loc, 1), hi - 1 if name == "randint" else hi)]
    sampler = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
    return sampler[name](lo, hi), ends


def _check_config(
    kind: TrainableKind,
    name: str,
    space: Mapping[Any, Any],
    candidates: Mapping[str, list[tuple[Loc, Any]]],
    clean: bool,
) -> list[tuple[Loc, str]]:
    """The trainable's keys, their types, then its own check on every value a trial may get.
    A rejected combination of first values is reported only when no value was left out (the
    space is ``clean`` and every type fits): else the missing value may be what it lacks."""
    problems: list[tuple[Loc, str]] = []
    keys = {key for key in space if isinstance(key, str)}
    types_ = kind.config_types
    if types_ is not None:
        reads = sorted(types_)
        problems += [
            ((), _unknown_key(k, reads, f"{name} reads")) for k in space if k not in types_
        ]
    if kind.required and not any(needed <= keys for needed in kind.required):
        needs = " or ".join(str(sorted(needed)) for needed in kind.required)
        problems.append(((), f"trainable {name!r} needs {needs}"))
    typed: dict[str, list[tuple[Loc, Any]]] = {}
    mistyped = []
    for key, values in candidates.items():
        if types_ is not None and key not in types_:
            continue  # the trainer does not read it
        hint = (types_ or {}).get(key, Any)
        for loc, value in values:
            if _fits(value, hint):
                typed.setdefault(key, []).append((loc, value))
            else:
                mistyped.append((loc, f"expected {_type_name(hint)}, got {_show(value)}"))
    problems += mistyped
    if kind.check is not None:
        found, together = _check_each(kind.check, typed)
        problems += found
        if together is not None and clean and not mistyped:
            problems.append(((), f"{together} (with the first value of every key)"))
    return problems


def _check_each(
    check: Callable[[dict[str, Any]], object], candidates: Mapping[str, Sequence[tuple[Loc, Any]]]
) -> tuple[list[tuple[Loc, str]], str | None]:
    """``check`` on every value a key may take, the other keys at their first value — configs
    trials really get, so a rule across keys (batch_size against micro_batch_size × num_workers)
    is not broken by a default — each problem at the value's ``Loc``.

    A key whose first value fails on the defaults alone stays out of that baseline. If the
    baseline itself fails, its error comes back second, and only the keys that fail alone are
    blamed (each other check would fail with it).
    """

    def error(config: dict[str, Any]) -> str | None:
        try:
            check(config)
        except (ValueError, TypeError, KeyError) as e:
            return str(e)
        return None

    alone = {key: error({key: values[0][1]}) for key, values in candidates.items()}
    base = {key: values[0][1] for key, values in candidates.items() if alone[key] is None}
    together = error(base)
    if together is not None:
        blamed = [(candidates[key][0][0], message) for key, message in alone.items() if message]
        return blamed, together
    problems = [
        (loc, message)
        for key, values in candidates.items()
        for loc, value in values
        if (message := error({**base, key: value})) is not None
    ]
    return problems, None


@functools.cache
def _adapter(hint: Any) -> TypeAdapter[Any]:
    return TypeAdapter(hint, config=ConfigDict(strict=True))


def _fits(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits an annotation of a trainer config (strict: 3.0 is no int)."""
    try:
        _adapter(hint).validate_python(value)
    except ValidationError:
        return False
    return True


# -- pydantic's errors in the spec's words -----------------------------------------------------
_WORDS = {
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "finite_number": "expected a finite number",
    "string_type": "expected a non-empty string",
    "string_too_short": "expected a non-empty string",
    "bool_type": "expected true or false",
    "dict_type": "expected a mapping (key: value)",
    "model_type": "expected a mapping (key: value)",
    "model_attributes_type": "expected a mapping (key: value)",
}
_SECTION_MODELS: dict[Loc, type[BaseModel]] = {
    (): SpecFile,
    ("resources",): PlacementGroupSection,
    ("scheduler",): SchedulerSection,
    ("mlflow",): MlflowSection,
    ("failure",): FailureSection,
}


def _problems(error: ValidationError, data: Any) -> list[tuple[str, str]]:
    """One ``(key path, message)`` per problem; a union's several errors for one scheduler
    argument are one problem."""
    problems: list[tuple[str, str]] = []
    for detail in error.errors(include_url=False):
        problem = _problem(detail, data)
        if problem not in problems:
            problems.append(problem)
    return problems


def _problem(detail: Any, data: Any) -> tuple[str, str]:
    loc, kind, value = tuple(detail["loc"]), detail["type"], detail["input"]
    if kind == "spec":  # raised by the spec's own checks, already in its words
        return _path(loc), str(detail["msg"])
    if loc[-1:] == ("[key]",) and len(loc) > 1 and not isinstance(loc[-2], str):  # dict keys
        return _path(loc[:-2]), f"keys must be strings, got {_show(loc[-2])} — quote it"
    if kind == "invalid_key":
        return _path(loc[:-1]), f"keys must be strings, got {_show(value)} — quote it"
    if kind == "extra_forbidden":
        model = _SECTION_MODELS.get(loc[:-1])
        return _path(loc[:-1]), _unknown_key(loc[-1], list(model.model_fields) if model else [])
    if kind == "missing":
        if len(loc) == 1:
            return "", f"missing section {loc[0]!r}"
        return _path(loc), "required (the runner gives it to tune.TuneConfig)"
    if not loc:
        return "", f"a spec is a mapping of sections, got {_show(value)}"
    if loc[0] == "scheduler" and len(loc) > 1 and (kind.endswith("_type") or kind in _WORDS):
        # A GrokScheduler argument: its annotation, as Python spells it.
        hint = SchedulerSection.model_fields[str(loc[1])].annotation
        if kind not in ("string_too_short", "finite_number"):
            return _path(loc[:2]), f"expected {_type_name(hint)}, got {_show(data[loc[0]][loc[1]])}"
    if kind == "greater_than_equal":
        return _path(loc), f"must be >= {detail['ctx']['ge']:g}, got {value}"
    if kind in ("list_type", "too_short"):
        what = f" of {loc[-1]}" if isinstance(loc[-1], str) else ""
        return _path(loc), f"expected a non-empty list{what}, got {_show(value)}"
    words = _WORDS.get(kind, detail["msg"])
    return _path(loc), f"{words}, got {_show(value)}"


def _path(loc: Loc) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith((f"{prefix}.", f"{prefix}["))


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
        if any(_fits_on(need, shape) for shape in shapes):
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


def _fits_on(need: Mapping[str, float], shape: Mapping[str, float]) -> bool:
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


def _unknown_key(key: Any, allowed: Sequence[str], what: str = "") -> str:
    close = difflib.get_close_matches(str(key), list(allowed), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"{what or 'known'}: {', '.join(allowed)}"
    return f"unknown key {key!r} ({hint})"


def _integer(value: Any) -> str | None:
    """What is wrong with ``value`` as an integer, if anything."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"expected an integer, got {_show(value)}"
    return None


def _number(value: Any) -> str | None:
    """What is wrong with ``value`` as a finite number, if anything."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"expected a number, got {_show(value)}"
    if not abs(value) <= sys.float_info.max:  # NaN, ±inf, and ints no float can hold
        return f"expected a finite number, got {_show(value)}"
    return None


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
    "REQUIRED",
    "SAMPLERS",
    "SECTIONS",
    "TRAINABLES",
    "ClusterView",
    "SpecError",
    "SpecFile",
    "SweepSpec",
    "TrainableKind",
    "TrialResources",
    "check_fits",
    "load_spec",
    "parse_spec",
    "spec_schema",
]
