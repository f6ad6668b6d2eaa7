"""`unigen.from_pretrained(path)`: a ready module from a weight file or folder (DESIGN.md §6).

Recognised sources:
  * an official DiT checkpoint file (`DiT-XL-2-256x256.pt`: a raw state dict, or the
    `{"model", "ema", ...}` dict its train.py writes; the EMA weights are used), as
    .pt/.pth (read with torch, if installed) or .safetensors (read with numpy);
  * a diffusers folder holding a `DiTTransformer2DModel` (config.json + safetensors), or a
    pipeline folder with it under `transformer/`;
  * a unigen pretrained folder (`python -m unigen.convert` output, `save_pretrained`);
  * a unigen training work dir (the latest EMA parameters).
`overrides` change runtime options of the returned module (`scan_layers`, `remat`,
`attention_backend`, `dtype`, ...), never the architecture read from the source. The one
exception is `num_heads` for an official checkpoint of non-standard width: a state dict's
shapes cannot tell the head count (standard widths 384/768/1024/1152 are known).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os

from unigen.convert import dit as dit_convert
from unigen.convert.unigen_format import CONFIG_FILE, build_filled, load_flat
from unigen.convert.weights import WeightError, read_weights
from unigen.models.dit import DiT, DiTConfig

_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def _read_folder_weights(folder: str) -> dict:
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors"))) or sorted(
        glob.glob(os.path.join(folder, "*.bin")))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors (or *.bin) weight files")
    sd = {}
    for f in files:  # sharded checkpoints: the shards' keys are disjoint
        sd.update(read_weights(f))
    return sd


def _runtime_overrides(overrides: dict, *extra: str) -> dict:
    allowed = {*extra, "scan_layers", "remat", "attention_backend", "attention_options", "dtype", "class_dropout_prob"}
    bad = set(overrides) - allowed
    if bad:
        raise ValueError(f"from_pretrained overrides {sorted(bad)} would change the architecture; "
                         f"allowed: {sorted(allowed)}")
    return overrides


def from_pretrained(path: str, **overrides):
    """Load a DiT from `path` (see module docstring). Returns an `nnx.Module`."""
    path = os.path.expanduser(path)
    overrides = _runtime_overrides(overrides, *(("num_heads",) if os.path.isfile(path) else ()))
    if os.path.isfile(path):
        if not path.endswith(_WEIGHT_SUFFIXES):
            raise ValueError(f"{path}: unknown weight file type; expected one of {_WEIGHT_SUFFIXES}")
        sd = read_weights(path)
        cfg = dit_convert.infer_official_config(sd, **overrides)
        return build_filled(DiT, cfg, dit_convert.official_to_flat(sd, cfg), path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no file or folder at {path}")
    if os.path.exists(os.path.join(path, CONFIG_FILE)):
        meta, flat = load_flat(path)
        if meta.get("kind") != "dit":
            raise ValueError(f"{path}: unigen model kind {meta.get('kind')!r} is not supported here")
        fields = {f.name for f in dataclasses.fields(DiTConfig)}
        cfg_dict = {k: (tuple(map(tuple, v)) if k == "attention_options" else v)
                    for k, v in meta["config"].items() if k in fields}
        cfg = DiTConfig(**{**cfg_dict, **overrides}).validate()
        return build_filled(DiT, cfg, flat, path)
    if os.path.isdir(os.path.join(path, "transformer")) and not os.path.exists(os.path.join(path, "config.json")):
        return from_pretrained(os.path.join(path, "transformer"), **overrides)
    config_path = os.path.join(path, "config.json")
    if os.path.exists(config_path):
        with open(config_path) as f:
            config = json.load(f)
        if config.get("_class_name") == "DiTTransformer2DModel":
            cfg = dit_convert.diffusers_config(config, **overrides)
            return build_filled(DiT, cfg, dit_convert.diffusers_to_flat(_read_folder_weights(path), cfg), path)
    from unigen.training import checkpoint as training_ckpt  # a training work dir
    if training_ckpt.is_workdir(path):
        return training_ckpt.load_model_for_inference(path, **overrides)
    raise WeightError(
        f"{path}: not a recognised model folder (expected a diffusers DiTTransformer2DModel "
        f"config.json, a unigen {CONFIG_FILE}, or a unigen training work dir)"
    )
