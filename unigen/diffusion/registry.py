"""Objectives and samplers by name: open registries, so a new one is a file and one registration.

    register_objective("x0_flow", build, options=X0FlowOptions)   # config.diffusion.kind = "x0_flow"
    register_sampler("midpoint", run, needs=(FlowODE,))            # config.sample.sampler = "midpoint"

An objective's `build(options, *, learn_sigma, input_shape) -> process` turns its options (a frozen
dataclass, the schema of the `config.diffusion` fields it reads besides `kind`: defaults, a
`validate()` that raises ValueError naming the field, and `section_field` resume metadata) into a
process of the objective protocol (unigen.diffusion.objective). A sampler's
`run(process, model_fn, shape, rng, *, cond, [steps,] **options)` draws samples (signature of
unigen.diffusion.samplers); `needs` are the capability protocols the process must offer
(`DataPrediction`, `FlowODE`, `GaussianDiffusion` or one of your own); `options` the dataclass of
its own `config.sample` fields (e.g. DDIM's `eta`). `steps` is every sampler's setting and is
passed when `run` takes it (DDPM and DDIM take their steps from the respaced process instead).
Which samplers fit a process is derived from the capabilities, never listed by the process: a
sampler registered later samples every process that offers what it needs.

One config may carry the fields of several objectives (or samplers) so that `--config.diffusion.kind=`
(or `--config.sample.sampler=`) switches between them: each reads its own fields and ignores the
others'. A field that no registered objective (sampler) declares is refused by name, so a misspelt
option never goes unread.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from typing import Callable

from unigen.config_sections import declare_schema, field_names, options_from
from unigen.errors import ConfigError
from unigen.registry import Registry

# The `config.sample` fields the generator itself reads, whatever the sampler (unigen/sampling.py;
# `per_class` is the trainer's grid size).
SAMPLE_FIELDS = ("sampler", "steps", "cfg_scale", "guided_channels", "guidance_interval", "per_class")


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options schema of an objective or sampler that reads no field of its own."""


@dataclasses.dataclass(frozen=True)
class ObjectiveEntry:
    name: str
    build: Callable  # build(options, *, learn_sigma: bool, input_shape: tuple | None) -> process
    options: type = NoOptions  # the frozen dataclass of its config.diffusion fields
    help: str = ""


@dataclasses.dataclass(frozen=True)
class SamplerEntry:
    name: str
    run: Callable                 # run(process, model_fn, shape, rng, *, cond, **options) -> samples
    needs: tuple[type, ...] = ()  # capability protocols (runtime_checkable) the process must satisfy
    options: type = NoOptions     # the frozen dataclass of its own config.sample fields
    help: str = ""

    @property
    def takes_steps(self) -> bool:
        return "steps" in inspect.signature(self.run).parameters

    def missing(self, process) -> list[str]:
        """The capabilities `process` lacks for this sampler (empty when it fits)."""
        return [cap.__name__ for cap in self.needs if not isinstance(process, cap)]


_OBJECTIVES: Registry[ObjectiveEntry] = Registry("objective")
_SAMPLERS: Registry[SamplerEntry] = Registry("sampler")


def _check_schema(what: str, name: str, options, reserved=()) -> type:
    if not (isinstance(options, type) and dataclasses.is_dataclass(options)):
        raise TypeError(f"{what}({name!r}): options must be a dataclass (the schema of its config fields), "
                        f"got {options!r}")
    clash = sorted(set(field_names(options)) & set(reserved))
    if clash:
        raise ValueError(f"{what}({name!r}): option(s) {clash} are the generator's own config.sample fields")
    return options


def register_objective(name: str, build: Callable, *, options: type = NoOptions, help: str = "") -> ObjectiveEntry:
    """Make `config.diffusion.kind = name` build its process with `build(options_instance, ...)`."""
    if not callable(build):
        raise TypeError(f"register_objective({name!r}): build must be callable, got {build!r}")
    declare_schema("diffusion", _check_schema("register_objective", name, options, reserved=("kind",)))
    return _OBJECTIVES.add(name, ObjectiveEntry(name, build, options, help))


def register_sampler(name: str, run: Callable, *, needs=(), options: type = NoOptions, help: str = "") -> SamplerEntry:
    """Make `config.sample.sampler = name` (and `infer/sample.py --sampler name`) run `run`."""
    if not callable(run):
        raise TypeError(f"register_sampler({name!r}): run must be callable, got {run!r}")
    _check_schema("register_sampler", name, options, reserved=SAMPLE_FIELDS)
    return _SAMPLERS.add(name, SamplerEntry(name, run, tuple(needs), options, help))


def _check_known(section: dict, where: str, own: tuple[str, ...], schemas: dict[str, type], what: str) -> None:
    """Every field of `section` is `own` or declared by some registered schema."""
    known = set(own).union(*(field_names(cls) for cls in schemas.values()))
    unknown = sorted(set(section) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"{where}.{unknown[0]}: no registered {what} reads this field; {hint}the registered "
                          f"{what}s read {sorted(known - set(own))} (besides {list(own)})")


def objective_options(dcfg, kind: str | None = None):
    """The typed options of `config.diffusion` for its `kind` (or `kind`): ConfigError for a field no
    registered objective declares, or a value the objective's schema refuses."""
    section = dict(dcfg or {})
    kind = section.get("kind") if kind is None else kind
    entry = get_objective(kind)
    _check_known(section, "config.diffusion", ("kind",), {e.name: e.options for e in _OBJECTIVES.values()},
                 "objective")
    return options_from(entry.options, section, "config.diffusion")


def sampler_options(sample_cfg, sampler: str | None = None):
    """The typed options `config.sample` gives its sampler (or `sampler`), as objective_options."""
    section = dict(sample_cfg or {})
    entry = get_sampler(section.get("sampler") if sampler is None else sampler)
    _check_known(section, "config.sample", SAMPLE_FIELDS, {e.name: e.options for e in _SAMPLERS.values()},
                 "sampler")
    return options_from(entry.options, section, "config.sample")


def get_objective(name: str) -> ObjectiveEntry:
    return _OBJECTIVES.get(name)


def objective_names() -> list[str]:
    return _OBJECTIVES.names()


def get_sampler(name: str) -> SamplerEntry:
    return _SAMPLERS.get(name)


def sampler_names() -> list[str]:
    return _SAMPLERS.names()


def samplers_for(process) -> list[str]:
    """The registered samplers whose needs `process` meets."""
    return [entry.name for entry in sorted(_SAMPLERS.values(), key=lambda e: e.name) if not entry.missing(process)]


def check_sampler(name: str, process) -> SamplerEntry:
    """The sampler `name`, or ValueError saying why it cannot sample `process` and what can."""
    entry = get_sampler(name)
    missing = entry.missing(process)
    if missing:
        raise ValueError(f"sampler={name!r} does not sample a {type(process).__name__} (it needs {missing}); "
                         f"use one of {samplers_for(process)}")
    return entry
