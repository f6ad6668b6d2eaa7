"""diffusers `AutoencoderKL` folders (SD / SDXL / SD3 / Flux VAEs, or a pipeline's `vae/`) ->
unigen AutoencoderKL (unigen/tokenizers/autoencoder_kl.py).

config.json maps field by field onto AutoencoderKLConfig; options unigen's VAE does not have
(another activation or block type, per-channel latent statistics) are refused by name (fields AutoencoderKL
does not declare are ignored with a warning, as diffusers ignores them), and so is a
float16 load of a VAE whose config says `force_upcast` (diffusers' pipelines run it in float32). Every
weight key is read exactly once, and each tensor's shape is checked against what config.json
implies before anything is built, so a folder whose weights and config.json disagree fails
naming the tensor, both shapes and the config fields to correct. The attention keys are
diffusers' `to_q/to_k/to_v/to_out.0`; the older `query/key/value/proj_attn` are read too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from unigen.convert.registry import register_diffusers
from unigen.convert.torch_layout import StateDict
from unigen.convert.unigen_format import build_filled
from unigen.convert.weights import read_config_fields, read_folder_weights
from unigen.errors import ConfigError, WeightError
from unigen.tokenizers.autoencoder_kl import AUTOENCODER_KL_KIND, AutoencoderKL, AutoencoderKLConfig

_NUMBER = (int, float)
# config.json field -> (accepted types, diffusers' default)
_FIELDS = {
    "in_channels": (int, 3), "out_channels": (int, 3), "down_block_types": ((list, tuple), ("DownEncoderBlock2D",)),
    "up_block_types": ((list, tuple), ("UpDecoderBlock2D",)), "block_out_channels": ((list, tuple), (64,)),
    "layers_per_block": (int, 1), "act_fn": (str, "silu"), "latent_channels": (int, 4),
    "norm_num_groups": (int, 32), "sample_size": ((int, list, tuple), 32), "scaling_factor": (_NUMBER, 0.18215),
    "shift_factor": ((*_NUMBER, type(None)), None), "latents_mean": ((list, tuple, type(None)), None),
    "latents_std": ((list, tuple, type(None)), None), "force_upcast": (bool, True),
    "use_quant_conv": (bool, True), "use_post_quant_conv": (bool, True), "mid_block_add_attention": (bool, True),
}


def diffusers_config(config: dict, **overrides: Any) -> AutoencoderKLConfig:
    """Map a diffusers `AutoencoderKL` config.json onto AutoencoderKLConfig."""
    f = read_config_fields(config, _FIELDS, "AutoencoderKL")
    levels = len(f["block_out_channels"])
    if f["act_fn"] != "silu":
        raise WeightError(f"config.json field 'act_fn' = {f['act_fn']!r}: unigen's AutoencoderKL uses 'silu' only")
    for key, block in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        if list(f[key]) != [block] * levels:
            raise WeightError(f"config.json field {key!r} = {f[key]!r}: unigen's AutoencoderKL has one {block!r} "
                              f"per entry of block_out_channels ({levels})")
    for key in ("latents_mean", "latents_std"):
        if f[key] is not None:
            raise WeightError(f"config.json field {key!r} is set: per-channel latent statistics are not supported "
                              f"(unigen normalises latents with the scalars shift_factor and scaling_factor)")
    size = f["sample_size"]
    try:
        cfg = AutoencoderKLConfig(
            in_channels=f["in_channels"], out_channels=f["out_channels"],
            block_out_channels=tuple(f["block_out_channels"]), layers_per_block=f["layers_per_block"],
            latent_channels=f["latent_channels"], norm_num_groups=f["norm_num_groups"], norm_eps=1e-6,
            sample_size=tuple(size) if isinstance(size, (list, tuple)) else size,
            scaling_factor=float(f["scaling_factor"]), shift_factor=float(f["shift_factor"] or 0.0),
            use_quant_conv=f["use_quant_conv"], use_post_quant_conv=f["use_post_quant_conv"],
            mid_block_add_attention=f["mid_block_add_attention"]).validate()
    except (ValueError, TypeError) as e:
        raise WeightError(f"config.json does not describe a valid AutoencoderKL: {e}") from None
    try:  # runtime options (dtype, remat) are the caller's
        cfg = dataclasses.replace(cfg, **overrides).validate()
    except (ValueError, TypeError) as e:
        raise ConfigError(f"from_pretrained overrides: {e}") from None
    # diffusers' pipelines run a float16 VAE whose config says force_upcast in float32 (the SD / SDXL / SD3 / Flux
    # VAEs overflow in float16); unigen does not change a requested dtype behind the caller's back, so it refuses.
    if f["force_upcast"] and cfg.dtype == "float16":
        raise ConfigError("from_pretrained(dtype='float16'): this VAE's config.json field 'force_upcast' is true (it "
                          "overflows in float16; diffusers upcasts it to float32); load it with dtype='float32' or "
                          "'bfloat16'")
    return cfg


class _Reader:
    """Takes tensors out of the state dict, checking each shape against config.json first."""

    def __init__(self, sd: dict[str, np.ndarray], cfg: AutoencoderKLConfig, folder: str):
        self.src, self.cfg, self.folder = StateDict(sd, f"{folder}: diffusers AutoencoderKL"), cfg, folder

    def take(self, key: str, shape: tuple[int, ...], fields: tuple[str, ...]) -> np.ndarray:
        said = ", ".join(f"{k}={getattr(self.cfg, k)!r}" for k in fields)
        fix = (f"config.json does not describe these weights: correct {', '.join(fields)} in "
               f"{self.folder}/config.json to the values the weights were saved with")
        if not self.src.has(key):
            raise WeightError(f"{self.folder}: tensor {key!r} is missing (config.json ({said}) implies one "
                              f"of shape {shape}); {fix}")
        found = tuple(np.shape(self.src.sd[key]))
        if found != tuple(shape):
            raise WeightError(f"{self.folder}: tensor {key!r} has shape {found}, but config.json ({said}) "
                              f"implies {tuple(shape)}; {fix}")
        return self.src.take(key, shape)

    def conv(self, pre: str, c_in: int, c_out: int, k: int, dst: dict, name: str, fields: tuple[str, ...]):
        """torch Conv2d (out, in, k, k) -> HWIO kernel, and its bias."""
        dst[f"{name}.kernel"] = self.take(f"{pre}.weight", (c_out, c_in, k, k), fields).transpose(2, 3, 1, 0)
        dst[f"{name}.bias"] = self.take(f"{pre}.bias", (c_out,), fields)

    def norm(self, pre: str, c: int, dst: dict, name: str, fields: tuple[str, ...]):
        dst[f"{name}.scale"] = self.take(f"{pre}.weight", (c,), fields)
        dst[f"{name}.bias"] = self.take(f"{pre}.bias", (c,), fields)

    def linear(self, pre: str, c: int, dst: dict, name: str, fields: tuple[str, ...]):
        dst[f"{name}.kernel"] = self.take(f"{pre}.weight", (c, c), fields).T
        dst[f"{name}.bias"] = self.take(f"{pre}.bias", (c,), fields)


_CHANNELS = ("block_out_channels", "layers_per_block")
_ATTENTION = {"q": ("to_q", "query"), "k": ("to_k", "key"), "v": ("to_v", "value"), "out": ("to_out.0", "proj_attn")}


def _resnet(r: _Reader, pre: str, c_in: int, c_out: int, dst: dict, out: str):
    r.norm(f"{pre}.norm1", c_in, dst, f"{out}.norm1", _CHANNELS)
    r.conv(f"{pre}.conv1", c_in, c_out, 3, dst, f"{out}.conv1", _CHANNELS)
    r.norm(f"{pre}.norm2", c_out, dst, f"{out}.norm2", _CHANNELS)
    r.conv(f"{pre}.conv2", c_out, c_out, 3, dst, f"{out}.conv2", _CHANNELS)
    if c_in != c_out:
        r.conv(f"{pre}.conv_shortcut", c_in, c_out, 1, dst, f"{out}.shortcut", _CHANNELS)


def _mid(r: _Reader, pre: str, c: int, dst: dict, out: str):
    for i in range(2):
        _resnet(r, f"{pre}.resnets.{i}", c, c, dst, f"{out}.resnets.{i}")
    if r.cfg.mid_block_add_attention:
        a, fields = f"{pre}.attentions.0", ("block_out_channels", "mid_block_add_attention")
        r.norm(f"{a}.group_norm", c, dst, f"{out}.attn.norm", fields)
        for ours, (new, old) in _ATTENTION.items():
            theirs = new if r.src.has(f"{a}.{new}.weight") or not r.src.has(f"{a}.{old}.weight") else old
            r.linear(f"{a}.{theirs}", c, dst, f"{out}.attn.{ours}", fields)


def diffusers_to_flat(sd: dict[str, np.ndarray], cfg: AutoencoderKLConfig, folder: str) -> dict[str, np.ndarray]:
    r, dst = _Reader(sd, cfg, folder), {}
    ch, lat, n, layers = cfg.block_out_channels, cfg.latent_channels, len(cfg.block_out_channels), cfg.layers_per_block
    r.conv("encoder.conv_in", cfg.in_channels, ch[0], 3, dst, "encoder.conv_in", ("in_channels", "block_out_channels"))
    for i in range(n):
        c_in = ch[max(i - 1, 0)]
        for j in range(layers):
            _resnet(r, f"encoder.down_blocks.{i}.resnets.{j}", c_in if j == 0 else ch[i], ch[i], dst,
                    f"encoder.down.{i}.resnets.{j}")
        if i < n - 1:
            r.conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", ch[i], ch[i], 3, dst, f"encoder.down.{i}.downsample",
                   _CHANNELS)
    _mid(r, "encoder.mid_block", ch[-1], dst, "encoder.mid")
    r.norm("encoder.conv_norm_out", ch[-1], dst, "encoder.norm_out", ("block_out_channels",))
    r.conv("encoder.conv_out", ch[-1], 2 * lat, 3, dst, "encoder.conv_out", ("latent_channels", "block_out_channels"))
    if cfg.use_quant_conv:
        r.conv("quant_conv", 2 * lat, 2 * lat, 1, dst, "quant_conv", ("latent_channels", "use_quant_conv"))
    if cfg.use_post_quant_conv:
        r.conv("post_quant_conv", lat, lat, 1, dst, "post_quant_conv", ("latent_channels", "use_post_quant_conv"))
    rev = ch[::-1]
    r.conv("decoder.conv_in", lat, rev[0], 3, dst, "decoder.conv_in", ("latent_channels", "block_out_channels"))
    _mid(r, "decoder.mid_block", rev[0], dst, "decoder.mid")
    for i in range(n):
        c_in = rev[max(i - 1, 0)]
        for j in range(layers + 1):
            _resnet(r, f"decoder.up_blocks.{i}.resnets.{j}", c_in if j == 0 else rev[i], rev[i], dst,
                    f"decoder.up.{i}.resnets.{j}")
        if i < n - 1:
            r.conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", rev[i], rev[i], 3, dst, f"decoder.up.{i}.upsample",
                   _CHANNELS)
    r.norm("decoder.conv_norm_out", ch[0], dst, "decoder.norm_out", ("block_out_channels",))
    r.conv("decoder.conv_out", ch[0], cfg.out_channels, 3, dst, "decoder.conv_out", ("out_channels", "block_out_channels"))
    try:
        r.src.finish()
    except WeightError as e:
        raise WeightError(f"{e}; the weights hold layers config.json does not describe: check its layers_per_block, "
                          f"block_out_channels, use_quant_conv, use_post_quant_conv and mid_block_add_attention") from None
    return dst


@register_diffusers("AutoencoderKL")
def load_diffusers(folder: str, config: dict, **overrides) -> AutoencoderKL:
    bad = sorted(set(overrides) - set(AUTOENCODER_KL_KIND.runtime_fields))
    if bad:
        raise ConfigError(f"from_pretrained overrides {bad} would change the architecture; "
                          f"allowed: {sorted(AUTOENCODER_KL_KIND.runtime_fields)}")
    try:
        cfg = diffusers_config(config, **overrides)
    except WeightError as e:
        raise WeightError(f"{folder}: {e}") from None
    return build_filled(AutoencoderKL, cfg, diffusers_to_flat(read_folder_weights(folder), cfg, folder), folder)
