"""Reading weight files and filling a module's parameters, strictly.

Safetensors are read with numpy (no torch). `.pt`/`.pth`/`.bin` files are read with
`torch.load(weights_only=True)` only when torch is installed (docs/design.md §6).
"""

from __future__ import annotations

import os
import warnings
from typing import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from unigen.errors import WeightError
from unigen.files import DAMAGED, size_note, unreadable


def read_config_fields(config: dict, fields: dict, model: str) -> dict:
    """Each of `fields` (name -> (accepted types, the reference's default)) read from a diffusers
    config.json dict with its type checked (a bool is accepted only where bool is the type)."""
    warn_unknown_fields(config, fields, model)
    out = {}
    for key, (kinds, default) in fields.items():
        value = config.get(key, default)
        if not isinstance(value, kinds) or isinstance(value, bool) != (kinds is bool):
            raise WeightError(f"config.json field {key!r} = {value!r} has the wrong type")
        out[key] = value
    return out


def warn_unknown_fields(config: dict, known, model: str) -> None:
    """diffusers ignores (with a warning) config fields its class does not declare, so a released
    config.json with such a field loads there; it loads here too, with the same warning. A field
    that would change the architecture shows as unknown or missing weight keys (`StateDict.finish`)."""
    unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
    if unknown:
        warnings.warn(f"config.json fields {unknown} are not options of {model} and are ignored, as diffusers "
                      f"ignores them", stacklevel=3)


def read_weights(path: str) -> dict[str, np.ndarray]:
    """A flat {key: float32/int numpy array} from a .safetensors or a torch checkpoint."""
    if not os.path.exists(path):
        raise WeightError(f"no weight file at {path}")
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    try:
        import torch
    except ImportError as e:  # torch is a test extra, never a runtime dependency
        raise ImportError(
            f"{path} is a PyTorch checkpoint; reading it needs torch (`pip install torch`), "
            "or convert it to .safetensors first"
        ) from e
    import argparse
    import pickle

    # weights_only=True never runs arbitrary code; the official DiT train.py also stores its
    # argparse.Namespace ("args") in the checkpoint, so that one class is allowed by name.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:  # before RuntimeError's cases: a folder, no permission
        if not isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise WeightError(f"{path} cannot be read as a PyTorch checkpoint ({_first_line(e)}) "
                              f"{size_note(path)}; {DAMAGED}") from None
        raise unreadable(path, e) from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        # torch.load's failures on a damaged file: an empty one (EOFError), random bytes or a refused
        # global (UnpicklingError), a truncated zip archive (RuntimeError "failed finding central directory")
        raise WeightError(f"{path} cannot be read as a PyTorch checkpoint ({_first_line(e)}) "
                          f"{size_note(path)}; {DAMAGED}") from None
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        # A DiT train.py checkpoint {"model", "ema", "opt", "args"}: sample with the EMA
        # weights, as the official sample.py does with released checkpoints.
        obj = obj["ema"] if isinstance(obj.get("ema"), Mapping) else obj["model"]
    if not isinstance(obj, Mapping):
        raise WeightError(f"{path}: expected a state dict, got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if not hasattr(v, "detach"):
            raise WeightError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k] = v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.numpy()
    return out


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
        return dict(load_file(path))
    except OSError as e:
        raise unreadable(path, e) from None
    except SafetensorError as e:  # a truncated, empty or foreign file: its header does not parse or cover it
        raise WeightError(f"{path} is not a readable safetensors file ({_first_line(e)}) {size_note(path)}; "
                          f"{DAMAGED}") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


def read_folder_weights(folder: str) -> dict[str, np.ndarray]:
    """All *.safetensors (else *.bin) files of a folder as one flat dict (sharded checkpoints'
    shards hold disjoint keys)."""
    import glob
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors"))) or sorted(
        glob.glob(os.path.join(folder, "*.bin")))
    if not files:
        raise WeightError(f"{folder}: no *.safetensors (or *.bin) weight files")
    sd = {}
    for f in files:
        sd.update(read_weights(f))
    return sd


def fill_module(abstract_module: nnx.Module, flat: Mapping[str, np.ndarray], *, source: str) -> nnx.Module:
    """Put `flat` ({"blocks.0.qkv.kernel": array, ...}, one entry per Param, blocks
    unstacked) into a module made with `nnx.eval_shape`. Scanned (stacked) blocks are
    assembled from the per-block entries. Missing keys, unused keys and wrong shapes are
    errors that name the key and both shapes."""
    graphdef, state = nnx.split(abstract_module)
    remaining = dict(flat)
    for path, var in nnx.to_flat_state(state):
        name = ".".join(str(p) for p in path)
        shape = tuple(var.shape)
        if name in remaining:
            value = remaining.pop(name)
        else:  # stacked over layers: path ('blocks', 'qkv', 'kernel') <- blocks.{i}.qkv.kernel
            # (the stacked subtree may be nested: encoder.blocks.qkv.kernel <- encoder.blocks.{i}.qkv.kernel)
            parts, per_layer = name.split("."), []
            for cut in range(1, len(parts)):
                head, rest = ".".join(parts[:cut]), ".".join(parts[cut:])
                if shape and f"{head}.0.{rest}" in remaining:
                    per_layer = [f"{head}.{i}.{rest}" for i in range(shape[0])]
                    break
            if not per_layer:
                raise WeightError(f"{source}: no weights for parameter {name!r} (shape {shape})")
            missing = [k for k in per_layer if k not in remaining]
            if missing:
                raise WeightError(f"{source}: missing {missing[0]!r} for stacked parameter {name!r}")
            value = np.stack([remaining.pop(k) for k in per_layer])
        if tuple(value.shape) != shape:
            raise WeightError(
                f"{source}: parameter {name!r} has shape {tuple(value.shape)} in the file "
                f"but the model expects {shape}"
            )
        var.set_value(jnp.asarray(value, dtype=var.dtype))
    if remaining:
        raise WeightError(f"{source}: unused weights {sorted(remaining)[:8]} (unknown to this model)")
    return nnx.merge(graphdef, state)
