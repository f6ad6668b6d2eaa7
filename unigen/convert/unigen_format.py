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
from flax import nnx

from unigen.convert.weights import fill_module

CONFIG_FILE = "unigen_config.json"
FORMAT_VERSION = 1


def module_to_flat(model: nnx.Module, stacked: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """{"blocks.0.qkv.kernel": array, ...}; subtrees named in `stacked` are split per layer."""
    flat = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = ".".join(str(p) for p in path)
        value = np.asarray(jax.device_get(var[...]))
        if path[0] in stacked:
            rest = ".".join(str(p) for p in path[1:])
            for i in range(value.shape[0]):
                flat[f"{path[0]}.{i}.{rest}"] = value[i]
        else:
            flat[name] = value
    return flat


def _nest(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: np.asarray(v)})
    return out


def save_pretrained(model: nnx.Module, path: str, *, kind: str = "dit") -> None:
    """Write `model` (a DiT) to `path` in unigen's format."""
    import orbax.checkpoint as ocp

    cfg = model.cfg
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    flat = module_to_flat(model, ("blocks",) if cfg.scan_layers else ())
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(path, "params"), _nest(flat), force=True)
    meta = {"format_version": FORMAT_VERSION, "kind": kind, "config": dataclasses.asdict(cfg)}
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(meta, f, indent=2, default=list)


def load_flat(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, flat params) from a unigen pretrained folder."""
    import orbax.checkpoint as ocp

    with open(os.path.join(path, CONFIG_FILE)) as f:
        meta = json.load(f)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unigen format version {meta.get('format_version')} is not {FORMAT_VERSION}")
    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(os.path.join(os.path.abspath(path), "params"))
    return meta, _flatten(tree)


def build_filled(model_cls, cfg, flat, source: str):
    abstract = nnx.eval_shape(lambda: model_cls(cfg, rngs=nnx.Rngs(0)))
    return fill_module(abstract, flat, source=source)
