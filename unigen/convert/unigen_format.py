"""unigen's own pretrained format: `unigen_config.json` + an orbax checkpoint `params/`.

Parameters are stored unstacked (`blocks/0/qkv/kernel`, ...) so one file loads into a
model built with or without scan-over-layers, on any mesh.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
from flax import nnx, traverse_util

from unigen.convert.weights import fill_module
from unigen.errors import ConfigError, WeightError
from unigen.files import read_json
from unigen.models.registry import get_model_kind, kind_of

CONFIG_FILE = "unigen_config.json"
FORMAT_VERSION = 1


def module_to_flat(model: nnx.Module, stacked: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """{"blocks.0.qkv.kernel": array, ...} for every variable (parameters and buffers); subtrees
    named in `stacked` ("blocks", or a dotted path such as "encoder.blocks") are split per layer."""
    flat = {}
    prefixes = [tuple(s.split(".")) for s in stacked]
    for path, var in nnx.to_flat_state(nnx.state(model)):
        path = tuple(str(p) for p in path)
        value = np.asarray(jax.device_get(var[...]))
        head = next((p for p in prefixes if path[:len(p)] == p), None)
        if head is not None:
            stem, rest = ".".join(head), ".".join(path[len(head):])
            for i in range(value.shape[0]):
                flat[f"{stem}.{i}.{rest}"] = value[i]
        else:
            flat[".".join(path)] = value
    return flat


def save_pretrained(model: nnx.Module, path: str) -> None:
    """Write `model` (any registered model kind) to `path` in unigen's format."""
    import orbax.checkpoint as ocp

    kind = kind_of(model)
    cfg = model.cfg
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    flat = module_to_flat(model, kind.stacked(cfg))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(path, "params"), traverse_util.unflatten_dict(flat, sep="."), force=True)
    meta = {"format_version": FORMAT_VERSION, "kind": kind.name, "config": dataclasses.asdict(cfg)}
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(meta, f, indent=2, default=list)


def load_flat(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, flat params) from a unigen pretrained folder."""
    import orbax.checkpoint as ocp

    config_path = os.path.join(path, CONFIG_FILE)
    meta = read_json(config_path)
    if meta.get("format_version") != FORMAT_VERSION:
        raise WeightError(f"{config_path}: unigen format version {meta.get('format_version')!r} is not {FORMAT_VERSION}")
    try:
        with ocp.StandardCheckpointer() as ckptr:
            tree = ckptr.restore(os.path.join(os.path.abspath(path), "params"))
    except Exception as e:  # a missing or damaged params/ folder
        raise WeightError(f"{path}/params cannot be read ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else ''})") from None
    return meta, {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep=".").items()}


def load_pretrained(path: str, **overrides) -> nnx.Module:
    """A module from unigen's format; `overrides` may change the kind's runtime fields only."""
    meta, flat = load_flat(path)
    try:
        kind = get_model_kind(meta.get("kind"))
        cfg_fields = dict(meta["config"])
    except (ValueError, KeyError, TypeError) as e:
        raise WeightError(f"{os.path.join(path, CONFIG_FILE)}: {e}") from None
    bad = sorted(set(overrides) - set(kind.runtime_fields))
    if bad:
        raise ConfigError(f"from_pretrained overrides {bad} would change the architecture; allowed for "
                         f"model kind {kind.name!r}: {sorted(kind.runtime_fields)}")
    try:
        cfg = kind.config_from_dict({**cfg_fields, **overrides})
        cfg = cfg.validate() if hasattr(cfg, "validate") else cfg
    except (ValueError, TypeError) as e:
        raise WeightError(f"{os.path.join(path, CONFIG_FILE)}: {e}") from None
    return build_filled(kind.module, cfg, flat, path)


def build_filled(model_cls, cfg, flat, source: str):
    abstract = nnx.eval_shape(lambda: model_cls(cfg, rngs=nnx.Rngs(0)))
    return fill_module(abstract, flat, source=source)
