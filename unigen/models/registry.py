"""Model kinds by name (docs/design.md §12): `config.model.kind` picks the network.

A kind says how to build its network from a run config, which named conditions it takes and
what "no condition" means for each (the null condition that condition dropout in training and
classifier-free guidance in sampling both use), and which of its config fields are runtime
options rather than architecture. Networks are called `model(x, t, **cond)`.

    register_model(ModelKind("my_net", MyNet, MyNetConfig, from_section=..., conditions=...))

`from_section(config.model, spec)` gets the kind's own section and an `InputSpec` (input side,
channels, classes, compute dtype), not the whole run config.

A kind registered from outside `unigen/` (a config file may import the module that registers
it, see `config.imports`) trains, checkpoints, resumes and samples like the built-in ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from unigen.config_sections import as_tuples, declare_fields
from unigen.data.shapes import model_input_shape
from unigen.registry import Registry

# How layers execute, not what they compute: a resumed run may change these for any kind.
declare_fields("model", resumable=("scan_layers", "remat", "attention_backend"))


@dataclasses.dataclass(frozen=True)
class Condition:
    """A named model input besides (x, t): its null value (broadcast to the input's shape: a
    scalar such as DiT's null label id or 0.0, or an array such as the empty prompt's token
    states) and the probability with which training replaces it by the null value
    (classifier-free guidance, Ho & Salimans 2022). Conditions of one `group` are dropped
    together, e.g. a prompt's token states and its pooled vector: dropping one without the
    other would train on half-prompts that guidance never asks for."""
    null: Any
    dropout: float = 0.0
    group: str | None = None


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What a network is sized for, from the run's data and train sections: one input's side and
    channels (pixels, or the tokenizer's latents: unigen/data/shapes.py), the data set's classes and
    the compute dtype. A model kind reads its own `config.model` section and this, nothing else."""
    side: int
    channels: int
    num_classes: int
    dtype: str

    @classmethod
    def of_run(cls, cfg) -> "InputSpec":
        side, channels = model_input_shape(cfg.data)
        return cls(side, channels, cfg.data.num_classes, cfg.train.compute_dtype)


@dataclasses.dataclass(frozen=True)
class ModelKind:
    name: str
    module: type                                  # module(config, rngs=nnx.Rngs(...)), keeps `.cfg`
    config: type                                  # a frozen dataclass
    # from_section(config.model, InputSpec) -> model config; ValueError naming the field if bad
    from_section: Callable[[Any, InputSpec], Any]
    conditions: Callable[[Any], dict[str, Condition]] = lambda cfg: {}
    runtime_fields: tuple[str, ...] = ()          # may differ between save and load (remat, dtype, ...)
    stacked: Callable[[Any], tuple[str, ...]] = lambda cfg: ()  # subtrees stacked over layers (scan)

    def config_for(self, run_cfg):
        """The model config a run config asks for: its model section and the input spec."""
        return self.from_section(run_cfg.model, InputSpec.of_run(run_cfg))

    def build(self, config, seed: int = 0):
        from flax import nnx
        return self.module(config, rngs=nnx.Rngs(params=seed))

    def config_from_dict(self, fields: dict):
        """The config from its JSON form (lists back to tuples; unknown fields are errors)."""
        known = {f.name for f in dataclasses.fields(self.config)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"model kind {self.name!r}: unknown config fields {unknown}; known: {sorted(known)}")
        return self.config(**{k: as_tuples(v) for k, v in fields.items()})


_KINDS: Registry[ModelKind] = Registry("model kind")


def register_model(kind: ModelKind) -> ModelKind:
    """Add (or replace) a model kind; returns it."""
    if not isinstance(kind, ModelKind):
        raise TypeError(f"register_model takes a ModelKind, got {type(kind).__name__}")
    return _KINDS.add(kind.name, kind)


def get_model_kind(name: str) -> ModelKind:
    return _KINDS.get(name)


def kind_of(module) -> ModelKind:
    """The registered kind whose module class built `module`."""
    for kind in _KINDS.values():
        if type(module) is kind.module:
            return kind
    raise ValueError(f"{type(module).__name__} is not a registered model kind; register it with "
                     f"unigen.models.register_model")


def model_kinds() -> list[str]:
    return _KINDS.names()
