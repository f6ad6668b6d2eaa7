"""Typed config sections, declared by the part that reads them.

A task, objective or model kind that reads a section of the run config (`config.unidiffuser`,
`config.lzn`, ...) declares it as a frozen dataclass: the fields with their defaults, and per field
the metadata the trainer needs when a work dir is resumed:

    @config_section("unidiffuser")
    @dataclasses.dataclass(frozen=True)
    class UniDiffuserOptions:
        text_dim: int = 8
        endpoint_prob: float = section_field(0.0, before=0.0)  # runs written before the field: 0.0

    opts = read_section(UniDiffuserOptions, cfg)   # unknown fields refused by name; lists -> tuples

`resumable=True` marks a field a resumed run may change; `before=` is the value a work dir written
before the field existed implied, so it resumes with that value. Sections that are not a
dataclass (data, model) declare the same metadata with `declare_fields`. The trainer's same-run
check (unigen/training/loop.py) asks `may_change_on_resume` and `value_before` and names no family.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from unigen.errors import ConfigError

_MISSING = object()
_RESUMABLE: set[str] = set()          # "section.field" a resumed run may change
_BEFORE: dict[str, Any] = {}          # "section.field" -> the value before the field existed
_SECTIONS: dict[str, type] = {}       # section name -> its dataclass


def section_field(default, *, resumable: bool = False, before: Any = _MISSING):
    """A dataclass field of a config section with its resume metadata."""
    metadata = {"resumable": resumable} | ({} if before is _MISSING else {"before": before})
    return dataclasses.field(default=default, metadata=metadata)


def declare_fields(section: str, *, resumable=(), before: dict | None = None) -> None:
    """Resume metadata for fields of a section that has no dataclass (e.g. "data", "model")."""
    _RESUMABLE.update(f"{section}.{name}" for name in resumable)
    _BEFORE.update({f"{section}.{name}": value for name, value in (before or {}).items()})


def config_section(name: str):
    """Class decorator: register a frozen dataclass as the schema of `config.<name>`."""
    def register(cls):
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"config_section({name!r}) takes a dataclass, got {cls!r}")
        _SECTIONS[name] = cls
        cls.section = name
        declare_schema(name, cls)
        return cls
    return register


def read_section(cls, cfg, **defaults):
    """`config.<cls.section>` as `cls` (its defaults, then `defaults`, then the config's values);
    a field the schema does not have is a ConfigError naming it and the known ones. Lists become
    tuples (configs round-trip through JSON), so the result is hashable."""
    given = dict(cfg.get(cls.section) or {})
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ConfigError(f"config.{cls.section}.{unknown[0]}: unknown option; known: {sorted(known)}")
    return cls(**{**defaults, **{k: as_tuples(v) for k, v in given.items()}})


def field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def options_from(cls, given: dict, where: str):
    """`cls` built from the entries of `given` it declares (the rest are someone else's), lists as
    tuples, then its `validate()` if it has one. A ValueError or TypeError while building or
    validating becomes a ConfigError under `where` (e.g. "config.sample"), naming the field."""
    values = {k: as_tuples(given[k]) for k in field_names(cls) if k in given}
    try:
        options = cls(**values)
        check = getattr(options, "validate", None)
        return (check() or options) if check is not None else options
    except (TypeError, ValueError) as e:
        text = str(e)
        raise ConfigError(text if text.startswith("config.") else f"{where}.{text}") from None


def declare_schema(section: str, cls) -> None:
    """Declare the resume metadata of `cls`'s fields (`section_field`) as fields of `config.<section>`,
    for schemas that share a section (the objectives of `config.diffusion`, the samplers of
    `config.sample`) and so are not the section's one dataclass."""
    for f in dataclasses.fields(cls):
        declare_fields(section, resumable=(f.name,) if f.metadata.get("resumable") else (),
                       before={f.name: f.metadata["before"]} if "before" in f.metadata else None)


def as_tuples(v):
    """`v` with every list (nested too) a tuple, as a frozen config needs after a JSON round trip; a
    dict-valued option is left to convert itself (e.g. to sorted item pairs)."""
    return tuple(as_tuples(x) for x in v) if isinstance(v, (list, tuple)) else v


def section_schema(name: str) -> type | None:
    """The dataclass registered for `config.<name>`, if any."""
    return _SECTIONS.get(name)


def may_change_on_resume(key: str) -> bool:
    """Whether a resumed run may change the flattened config field `key` (e.g. "data.data_dir")."""
    return key in _RESUMABLE


def value_before(key: str) -> tuple[bool, Any]:
    """(True, value) when `key` was introduced after work dirs were first written, with the value
    such a work dir implied; (False, None) otherwise."""
    return (True, _BEFORE[key]) if key in _BEFORE else (False, None)
