"""diffusers `AutoencoderRAE` folders -> unigen RAE (unigen/tokenizers/rae.py).

The state dict (diffusers autoencoder_rae.py): `encoder.*` a transformers
Dinov2WithRegistersModel without the final LayerNorm's affine (read by unigen/convert/dinov2.py
under the prefix "encoder."), the buffers `encoder_mean` / `encoder_std` (1, C, 1, 1) and
`_latents_mean` / `_latents_std` (any shape broadcasting against (B, C, h, w): the default (1,)
zeros / ones, or the reference's (C, h, w) statistics), and `decoder.*`: `decoder_embed`,
`trainable_cls_token`, `decoder_layers.N.{layernorm_before, attention.to_q/to_k/to_v/to_out.0,
layernorm_after, intermediate.dense, output.dense}`, `decoder_norm`, `decoder_pred`. The fixed
`decoder.decoder_pos_embed` is not stored (recomputed; ignored if present). diffusers builds the
encoder with 64-wide heads, 4 registers and a 518px position table; only encoder_type "dinov2"
is supported (SigLIP2 and MAE encoders are refused by name, before any weight is read). config.json's
`latents_mean` / `latents_std` lists only shape diffusers' buffers (the stored buffers hold the values), so their
shapes must agree. Every other key is read once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unigen.convert.dinov2 import dinov2_to_flat
from unigen.convert.registry import register_diffusers
from unigen.convert.torch_layout import StateDict, fused_qkv, linear
from unigen.convert.unigen_format import build_filled
from unigen.convert.weights import read_config_fields, read_folder_weights
from unigen.errors import ConfigError, WeightError
from unigen.tokenizers.dinov2 import Dinov2Config
from unigen.tokenizers.rae import RAE, RAEConfig

_NUMBER = (int, float)
_OPTIONAL_LIST = (list, tuple, type(None))
_FIELDS = {  # config.json field -> (accepted types, diffusers' default)
    "encoder_type": (str, "dinov2"), "encoder_hidden_size": (int, 768), "encoder_patch_size": (int, 14),
    "encoder_num_hidden_layers": (int, 12), "decoder_hidden_size": (int, 512), "decoder_num_hidden_layers": (int, 8),
    "decoder_num_attention_heads": (int, 16), "decoder_intermediate_size": (int, 2048), "patch_size": (int, 16),
    "encoder_input_size": (int, 224), "image_size": ((int, type(None)), None), "num_channels": (int, 3),
    "encoder_norm_mean": (_OPTIONAL_LIST, None), "encoder_norm_std": (_OPTIONAL_LIST, None),
    "latents_mean": (_OPTIONAL_LIST, None), "latents_std": (_OPTIONAL_LIST, None), "noise_tau": (_NUMBER, 0.0),
    "reshape_to_2d": (bool, True), "use_encoder_loss": (bool, False), "scaling_factor": (_NUMBER, 1.0),
}
HEAD_DIM = 64  # diffusers sizes the encoder's heads as hidden_size // 64


def _nhwc_stats(value: np.ndarray, name: str, channels: int) -> tuple[str, np.ndarray]:
    """A statistic broadcasting against NCHW latents -> (its latent_stats mode, the same numbers
    broadcasting against NHWC)."""
    v = np.asarray(value, np.float32)
    if v.ndim == 4 and v.shape[0] == 1:
        v = v[0]
    if v.ndim == 3 and v.shape[1:] == (1, 1):
        v = v[:, 0, 0]
    if v.ndim == 3 and v.shape[0] == channels:
        return "position", v.transpose(1, 2, 0)     # (C, h, w) -> (h, w, C)
    if v.ndim == 1 and v.size == channels:
        return "channel", v
    if v.size == 1:
        return "global", v.reshape(1)
    raise WeightError(f"{name} has shape {value.shape}: expected (1,), (C,), (C, 1, 1) or (C, h, w) with C = {channels}")


def refuse_unsupported(f: dict) -> None:
    """The config.json fields diffusers uses that unigen's RAE cannot honour (checked before any weight is read)."""
    if f["encoder_type"] != "dinov2":
        raise WeightError(f"config.json field 'encoder_type' = {f['encoder_type']!r}: unigen's RAE reads DINOv2 "
                          f"encoders only (not SigLIP2 or MAE)")
    if not f["reshape_to_2d"]:
        raise WeightError("config.json field 'reshape_to_2d' = False: unigen's RAE latents are (B, h, w, C) grids")


def rae_config(f: dict, latent_stats: str, **overrides: Any) -> RAEConfig:
    refuse_unsupported(f)
    width = f["encoder_hidden_size"]
    if width % HEAD_DIM:
        raise WeightError(f"config.json field 'encoder_hidden_size' = {width}: diffusers' encoder uses {HEAD_DIM}-wide "
                          f"heads, so it must be a multiple of {HEAD_DIM}")
    encoder = Dinov2Config(hidden_size=width, num_layers=f["encoder_num_hidden_layers"], num_heads=width // HEAD_DIM,
                           patch_size=f["encoder_patch_size"], image_size=518, num_channels=f["num_channels"],
                           num_register_tokens=4, pos_antialias=True, layernorm_affine=False)
    runtime = {k: overrides.pop(k) for k in ("dtype", "attention_backend") if k in overrides}
    if overrides:
        raise ConfigError(f"from_pretrained overrides {sorted(overrides)}: an RAE takes only dtype and "
                          f"attention_backend")
    try:
        cfg = RAEConfig(
            encoder_type="dinov2", encoder=encoder, encoder_input_size=f["encoder_input_size"],
            encoder_norm_mean=tuple(f["encoder_norm_mean"] or (0.485, 0.456, 0.406)),
            encoder_norm_std=tuple(f["encoder_norm_std"] or (0.229, 0.224, 0.225)),
            decoder_hidden_size=f["decoder_hidden_size"], decoder_num_layers=f["decoder_num_hidden_layers"],
            decoder_num_heads=f["decoder_num_attention_heads"],
            decoder_intermediate_size=f["decoder_intermediate_size"], patch_size=f["patch_size"],
            num_channels=f["num_channels"], layer_norm_eps=1e-12, decoder_pos_base_size=16, noise_tau=float(f["noise_tau"]),
            scaling_factor=float(f["scaling_factor"]), latent_stats=latent_stats, **runtime).validate()
    except (TypeError, ValueError) as e:
        raise WeightError(f"config.json does not describe a valid AutoencoderRAE: {e}") from None
    if f["image_size"] is not None and f["image_size"] != cfg.image_size:
        raise WeightError(f"config.json field 'image_size' = {f['image_size']}: must be patch_size x the encoder's grid "
                          f"= {cfg.image_size}")
    return cfg


def _decoder(src: StateDict, cfg: RAEConfig, dst: dict) -> None:
    d, h, m = cfg.decoder_hidden_size, cfg.decoder_num_heads, cfg.decoder_intermediate_size
    linear(src, "decoder.decoder_embed", cfg.latent_channels, (d,), dst, "decoder.embed")
    dst["decoder.cls_token"] = src.take("decoder.trainable_cls_token", (1, 1, d))
    for i in range(cfg.decoder_num_layers):
        pre, out = f"decoder.decoder_layers.{i}.", f"decoder.layers.{i}."
        for theirs, ours in (("layernorm_before", "norm1"), ("layernorm_after", "norm2")):
            dst[out + ours + ".scale"] = src.take(pre + theirs + ".weight", (d,))
            dst[out + ours + ".bias"] = src.take(pre + theirs + ".bias", (d,))
        fused_qkv(src, tuple(pre + f"attention.to_{w}" for w in "qkv"), d, h, d // h, dst, out + "qkv")
        dst[out + "proj.kernel"] = src.take(pre + "attention.to_out.0.weight", (d, d)).T.reshape(h, d // h, d)
        dst[out + "proj.bias"] = src.take(pre + "attention.to_out.0.bias", (d,))
        linear(src, pre + "intermediate.dense", d, (m,), dst, out + "fc1")
        linear(src, pre + "output.dense", m, (d,), dst, out + "fc2")
    dst["decoder.norm.scale"] = src.take("decoder.decoder_norm.weight", (d,))
    dst["decoder.norm.bias"] = src.take("decoder.decoder_norm.bias", (d,))
    linear(src, "decoder.decoder_pred", d, (cfg.patch_size ** 2 * cfg.num_channels,), dst, "decoder.pred")


@register_diffusers("AutoencoderRAE")
def load_diffusers_rae(folder: str, config: dict, **overrides) -> RAE:
    f = read_config_fields(config, _FIELDS, "AutoencoderRAE")
    try:
        refuse_unsupported(f)
    except WeightError as e:
        raise WeightError(f"{folder}: {e}") from None
    sd = read_folder_weights(folder)
    c = f["num_channels"]
    name = f"{folder}: diffusers AutoencoderRAE"
    modes, stats = {}, {}
    for key in ("_latents_mean", "_latents_std"):
        if key not in sd:
            raise WeightError(f"{name}: missing buffer {key!r}")
        buffer = sd.pop(key)
        # diffusers builds the buffer from config.json's list, then loads the stored one over it: the values come
        # from the weights, but a list of another shape makes diffusers' load fail
        said = f[key[1:]]
        if said is not None and np.shape(said) != np.shape(buffer):
            raise WeightError(f"{name}: config.json field {key[1:]!r} has shape {np.shape(said)} but the stored "
                              f"buffer {key!r} has {np.shape(buffer)}; correct config.json")
        modes[key], stats[key] = _nhwc_stats(buffer, f"{name}: {key}", f["encoder_hidden_size"])
    if stats["_latents_mean"].shape != stats["_latents_std"].shape:
        raise WeightError(f"{name}: _latents_mean {stats['_latents_mean'].shape} and _latents_std "
                          f"{stats['_latents_std'].shape} differ in shape")
    mode = modes["_latents_mean"]
    if mode == "global" and stats["_latents_mean"][0] == 0 and stats["_latents_std"][0] == 1:
        mode = "none"  # diffusers' defaults: z / (1 + 1e-5), a no-op to 1e-5
    cfg = rae_config(f, mode, **overrides)
    src = StateDict({k: v for k, v in sd.items() if not k.startswith("encoder.")}, name)
    for key, field in (("encoder_mean", "encoder_norm_mean"), ("encoder_std", "encoder_norm_std")):
        buffer = src.take(key, (1, c, 1, 1)).reshape(c)
        if not np.allclose(buffer, getattr(cfg, field), rtol=1e-6, atol=1e-7):
            raise WeightError(f"{name}: buffer {key} = {buffer.tolist()} disagrees with config.json {field} = "
                              f"{list(getattr(cfg, field))}; correct config.json")
    flat = {"encoder." + k: v for k, v in dinov2_to_flat(
        {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}, cfg.encoder,
        source=f"{name} (encoder)").items()}
    _decoder(src, cfg, flat)
    src.finish(ignore=(r"decoder\.decoder_pos_embed",))
    if mode != "none":
        flat["latents_mean"], flat["latents_std"] = stats["_latents_mean"], stats["_latents_std"]
    return build_filled(RAE, cfg, flat, folder)
