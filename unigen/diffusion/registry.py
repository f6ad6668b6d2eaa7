"""Objectives and samplers by name: open registries, so a new one is a file and one registration.

    register_objective("x0_flow", build)       # config.diffusion.kind = "x0_flow"
    register_sampler("midpoint", run, needs=(FlowODE,), options=("steps",))  # config.sample.sampler

An objective's `build(dcfg, *, learn_sigma, input_shape) -> process` turns the run's
`config.diffusion` section into a process of the objective protocol (unigen.diffusion.objective);
it raises ValueError naming the field it cannot take. A sampler's
`run(process, model_fn, shape, rng, *, cond, **options)` draws samples (signature of
unigen.diffusion.samplers); `needs` are the capability protocols the process must offer
(`DataPrediction`, `FlowODE`, `AncestralSteps` or one of your own), `options` the generator settings
it takes, from {"steps", "eta", "clip_denoised"}. Which samplers fit a process is derived from
the capabilities, never listed by the process: a sampler registered later samples every process
that offers what it needs.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from unigen.registry import Registry

SAMPLER_OPTIONS = ("steps", "eta", "clip_denoised")


@dataclasses.dataclass(frozen=True)
class ObjectiveEntry:
    name: str
    build: Callable  # build(dcfg, *, learn_sigma: bool, input_shape: tuple | None) -> process
    help: str = ""


@dataclasses.dataclass(frozen=True)
class SamplerEntry:
    name: str
    run: Callable                 # run(process, model_fn, shape, rng, *, cond, **options) -> samples
    needs: tuple[type, ...] = ()  # capability protocols (runtime_checkable) the process must satisfy
    options: tuple[str, ...] = ("steps",)
    help: str = ""

    def missing(self, process) -> list[str]:
        """The capabilities `process` lacks for this sampler (empty when it fits)."""
        return [cap.__name__ for cap in self.needs if not isinstance(process, cap)]


_OBJECTIVES: Registry[ObjectiveEntry] = Registry("objective")
_SAMPLERS: Registry[SamplerEntry] = Registry("sampler")


def register_objective(name: str, build: Callable, *, help: str = "") -> ObjectiveEntry:
    """Make `config.diffusion.kind = name` build its process with `build`."""
    if not callable(build):
        raise TypeError(f"register_objective({name!r}): build must be callable, got {build!r}")
    return _OBJECTIVES.add(name, ObjectiveEntry(name, build, help))


def register_sampler(name: str, run: Callable, *, needs=(), options=("steps",), help: str = "") -> SamplerEntry:
    """Make `config.sample.sampler = name` (and `infer/sample.py --sampler name`) run `run`."""
    unknown = sorted(set(options) - set(SAMPLER_OPTIONS))
    if unknown:
        raise ValueError(f"register_sampler({name!r}): options {unknown} unknown; a sampler takes some of "
                         f"{SAMPLER_OPTIONS}")
    if not callable(run):
        raise TypeError(f"register_sampler({name!r}): run must be callable, got {run!r}")
    return _SAMPLERS.add(name, SamplerEntry(name, run, tuple(needs), tuple(options), help))


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
