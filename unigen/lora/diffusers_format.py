"""LoRA safetensors files in the layout diffusers' SD3 / Flux pipelines read and write.

Layout (diffusers `save_lora_weights` over PEFT's state dict): for each adapted Linear,
`transformer.<diffusers module path>.lora_A.weight` (r, in) and `...lora_B.weight` (out, r),
torch orientation. The scale alpha / r is not in the tensors:
  * diffusers (>= 0.34) writes PEFT's LoraConfig as JSON under the safetensors header metadata
    key `lora_adapter_metadata`, each field prefixed `transformer.` (`transformer.r`,
    `transformer.lora_alpha`, `transformer.rank_pattern`, `transformer.alpha_pattern`, ...), and
    `load_lora_adapter` builds the LoraConfig from it. That is the one alpha channel both the SD3
    and the Flux loaders read (SD3's passes no network alphas at all), so `save_lora` writes it;
  * Flux files from other trainers carry `<module>.alpha` scalar tensors instead, which
    diffusers' Flux loader turns into network alphas; `load_lora` reads those too;
  * with neither, diffusers takes alpha = r (scale 1), and so does `load_lora`.
Keys diffusers would not apply to the transformer (text-encoder LoRAs, kohya `lora_down` /
`lora_up` layouts, DoRA magnitudes, LoRA biases) are refused by name rather than dropped.
"""

from __future__ import annotations

import collections
import json
import math
import os
import re

import jax.numpy as jnp
import numpy as np

from unigen.errors import WeightError
from unigen.lora.adapters import Lora, all_targets, model_kind

PREFIX = "transformer."
METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".alpha")


def _most_common(values: dict):
    return collections.Counter(values.values()).most_common(1)[0][0]


def to_diffusers(lora: Lora) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors, LoraConfig fields) as diffusers' save_lora_weights would write them."""
    tensors = {}
    for m in sorted(lora.params):
        a, b = (np.asarray(lora.params[m][k], np.float32) for k in ("a", "b"))
        tensors[f"{PREFIX}{m}.lora_A.weight"] = np.ascontiguousarray(a.T)  # (r, in)
        tensors[f"{PREFIX}{m}.lora_B.weight"] = np.ascontiguousarray(b.T)  # (out, r)
    ranks = {m: lora.rank(m) for m in lora.params}
    alphas = {m: float(lora.alphas[m]) for m in lora.params}
    r, alpha = _most_common(ranks), _most_common(alphas)
    # PEFT matches pattern keys as regexes on a dotted suffix: escape the dots, name whole paths
    config = {"r": r, "lora_alpha": alpha, "target_modules": sorted(lora.params),
              "rank_pattern": {re.escape(m): v for m, v in ranks.items() if v != r},
              "alpha_pattern": {re.escape(m): v for m, v in alphas.items() if v != alpha},
              "init_lora_weights": True, "lora_dropout": 0.0, "bias": "none", "use_dora": False,
              "use_rslora": False}
    return tensors, config


def save_lora(path: str, lora: Lora, model_kind: str | None = None) -> None:
    """Write `lora` as a diffusers / PEFT LoRA safetensors file (`pipe.load_lora_weights(path)` or
    `transformer.load_lora_adapter(path)` applies it). `model_kind` ('sd3' / 'flux'), if given,
    must be the adapter's."""
    from safetensors.numpy import save_file
    if model_kind is not None and model_kind != lora.kind:
        raise ValueError(f"save_lora: model_kind={model_kind!r} but the adapters were made for a {lora.kind} model")
    if not lora.params:
        raise ValueError("save_lora: the LoRA has no adapters")
    tensors, config = to_diffusers(lora)
    meta = {f"{PREFIX}{k}": v for k, v in config.items()}
    if os.path.isdir(path):  # diffusers' default weight name in a save directory
        path = os.path.join(path, "pytorch_lora_weights.safetensors")
    save_file(tensors, path, metadata={"format": "pt", METADATA_KEY: json.dumps(meta, indent=2, sort_keys=True)})


def _read(path: str) -> tuple[dict[str, np.ndarray], dict | None]:
    from safetensors import SafetensorError, safe_open
    if os.path.isdir(path):
        path = os.path.join(path, "pytorch_lora_weights.safetensors")
    if not os.path.isfile(path):
        raise WeightError(f"no LoRA file at {path}")
    try:
        with safe_open(path, framework="numpy") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise WeightError(f"{path} is not a readable safetensors file ({e})") from None
    raw = header.get(METADATA_KEY)
    try:
        meta = json.loads(raw) if raw else None
    except json.JSONDecodeError as e:
        raise WeightError(f"{path}: header metadata {METADATA_KEY!r} is not JSON ({e})") from None
    return tensors, meta


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: the first key matching a dotted suffix."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def load_lora(path: str, model) -> Lora:
    """Read a diffusers / PEFT LoRA file (unigen's `save_lora`, diffusers' `save_lora_weights`, or
    a Flux file with `.alpha` scalars) into adapters for `model` (unigen MMDiT or Flux). Every key
    must be an adapter of a Linear of this model with matching shapes; anything else is a
    WeightError naming the keys."""
    kind = model_kind(model)
    tensors, meta = _read(path)
    if not tensors:
        raise WeightError(f"{path}: the file has no tensors")
    keys = sorted(tensors)
    if not any(k.startswith(PREFIX) for k in keys):
        # PEFT's own get_peft_model_state_dict saved as is: no `transformer.` component prefix
        tensors, keys = {PREFIX + k: v for k, v in tensors.items()}, [PREFIX + k for k in keys]
    other = [k for k in keys if not k.startswith(PREFIX)]
    if other:
        what = "text-encoder LoRA keys (unigen adapts the transformer only)" if any(
            k.startswith("text_encoder") for k in other) else "keys outside the transformer"
        raise WeightError(f"{path}: {what}: {other[:6]}{' ...' if len(other) > 6 else ''}")
    bad = [k for k in keys if not k.endswith(_SUFFIXES)]
    if bad:
        hint = ("; this looks like a kohya-format file (lora_down / lora_up): convert it with diffusers "
                "(load_lora_weights, then save_lora_weights) first" if any("lora_down" in k or "lora_up" in k
                                                                           for k in bad) else "")
        raise WeightError(f"{path}: not LoRA A / B / alpha keys: {bad[:6]}{' ...' if len(bad) > 6 else ''}{hint}")

    groups: dict[str, dict[str, np.ndarray]] = collections.defaultdict(dict)
    for k in keys:
        suffix = next(s for s in _SUFFIXES if k.endswith(s))
        groups[k[len(PREFIX):-len(suffix)]][suffix] = tensors[k]
    targets = all_targets(model)
    unknown = sorted(m for m in groups if m not in targets)
    if unknown:
        raise WeightError(f"{path}: LoRA for modules this {kind} model does not have (or that are not Linears): "
                          f"{unknown[:6]}{' ...' if len(unknown) > 6 else ''} "
                          f"(keys like {PREFIX}{unknown[0]}.lora_A.weight)")
    if meta is not None:
        meta = {k[len(PREFIX):]: v for k, v in meta.items() if k.startswith(PREFIX)}
        for flag in ("use_dora", "lora_bias"):
            if meta.get(flag):
                raise WeightError(f"{path}: LoraConfig {flag}=True is not supported (plain LoRA only)")

    params, alphas = {}, {}
    for m in sorted(groups):
        g, t = groups[m], targets[m]
        missing = [s for s in _SUFFIXES[:2] if s not in g]
        if missing:
            raise WeightError(f"{path}: {PREFIX}{m} has no {missing[0][1:]} (LoRA needs both lora_A and lora_B)")
        a_t, b_t = np.asarray(g[".lora_A.weight"], np.float32), np.asarray(g[".lora_B.weight"], np.float32)
        if a_t.ndim != 2 or b_t.ndim != 2:
            raise WeightError(f"{path}: {PREFIX}{m}: lora_A {a_t.shape} / lora_B {b_t.shape} are not matrices "
                              f"(only Linear LoRAs are supported)")
        r = a_t.shape[0]
        if b_t.shape[1] != r:
            raise WeightError(f"{path}: {PREFIX}{m}: rank mismatch, lora_A {a_t.shape} has rank {r} but "
                              f"lora_B {b_t.shape} has {b_t.shape[1]}")
        if a_t.shape[1] != t.d_in or b_t.shape[0] != t.d_out:
            raise WeightError(f"{path}: {PREFIX}{m}: lora_A {a_t.shape} / lora_B {b_t.shape} do not fit the "
                              f"Linear ({t.d_in} -> {t.d_out}); expected ({r}, {t.d_in}) and ({t.d_out}, {r})")
        if meta is not None:
            want = _pattern_value(meta.get("rank_pattern") or {}, m, meta.get("r", r))
            if want != r:
                raise WeightError(f"{path}: {PREFIX}{m}: rank mismatch, the tensors have rank {r} but the "
                                  f"file's LoraConfig says r={want}")
            alpha = float(_pattern_value(meta.get("alpha_pattern") or {}, m, meta.get("lora_alpha", r)))
            if meta.get("use_rslora"):  # PEFT scales by alpha / sqrt(r): the same update as alpha' / r
                alpha *= math.sqrt(r)
        elif ".alpha" in g:
            alpha = float(np.asarray(g[".alpha"]).reshape(()))
        else:  # diffusers: no alpha anywhere means alpha = r
            alpha = float(r)
        params[m] = {"a": jnp.asarray(a_t.T), "b": jnp.asarray(b_t.T)}
        alphas[m] = alpha
    return Lora(kind, {m: targets[m] for m in params}, alphas, params)

