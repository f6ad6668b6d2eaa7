"""The "lzn" model kind: a Latent Zoning Network's trainable parts in one module.

LZN (Lin et al. 2025) maps every data type into one latent space. Here (the reference's
GenerationTrainer / ContrastiveTrainer, microsoft/latent-zoning-networks):

    encoder   ImageEncoder: image -> anchor a (B, latent_dim)          (unigen.lzn.encoder)
    labels    LabelAnchors: one learnable anchor per class (num_classes > 0)
    decoder   DiT with a vector condition: a rectified flow on images conditioned on the
              latent z (and the class label when decoder_label=True)   (unigen.models.dit)

`model(x, t, z=..., y=...)` is the decoder, so the trainer, the sampler and the checkpoints
treat an LZN like any model kind: `Generator` samples images given latents z (conditions "z"
and "y"). The latent flow itself has no parameters (unigen.lzn.flow); the tasks in
unigen/tasks/lzn.py wire encoder, flow, label anchors and decoder into the three losses.

Config (JSON-able, nested): `encoder` an ImageEncoderConfig, `decoder` a DiTConfig or None
(representation learning trains the encoder alone), `num_classes` label anchors (0 = none).
The decoder's `vector_dim` is the encoder's `latent_dim`; its `num_classes` is num_classes
when `decoder_label` (class-conditional generation) and 0 otherwise. The runtime fields
dtype / attention_backend / scan_layers / remat apply to both networks.

`unigen.from_pretrained(WORKDIR, component="encoder")` returns the encoder and
`component="classifier"` an `LZNClassifier` (unigen/lzn/classifier.py).
"""

from __future__ import annotations

import dataclasses

from flax import nnx

from unigen.config_sections import as_tuples
from unigen.lzn.encoder import ImageEncoder, ImageEncoderConfig, LabelAnchors
from unigen.models.dit import DiT, DiTConfig, dit_config
from unigen.models.registry import Condition, InputSpec, ModelKind, register_model
from unigen.nn.checks import is_positive_int

RUNTIME_FIELDS = ("dtype", "attention_backend", "scan_layers", "remat")


def _sub_config(cls, value, field):
    """A sub-config from a dataclass or its JSON dict (lists back to tuples)."""
    if value is None or isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"LZNConfig.{field}: expected a {cls.__name__} or a dict of its fields, "
                         f"got {type(value).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"LZNConfig.{field}: unknown {cls.__name__} fields {unknown}")
    return cls(**{k: as_tuples(v) for k, v in value.items()})


@dataclasses.dataclass(frozen=True)
class LZNConfig:
    encoder: ImageEncoderConfig = ImageEncoderConfig()
    decoder: DiTConfig | None = None
    num_classes: int = 0            # label anchors (classification); 0 = none
    decoder_label: bool = False     # the decoder also takes the class label y
    dtype: str = "float32"          # runtime fields, applied to both networks
    attention_backend: str = "auto"
    scan_layers: bool = False
    remat: bool = False

    def __post_init__(self):
        # Sub-configs from JSON dicts, with the runtime fields and the wiring imposed: the
        # decoder's vector condition is the latent, its labels those of the label anchors.
        enc = _sub_config(ImageEncoderConfig, self.encoder, "encoder")
        enc = dataclasses.replace(enc, dtype=self.dtype, attention_backend=self.attention_backend,
                                  scan_layers=self.scan_layers)
        object.__setattr__(self, "encoder", enc)
        dec = _sub_config(DiTConfig, self.decoder, "decoder")
        if dec is not None:
            dec = dataclasses.replace(
                dec, dtype=self.dtype, attention_backend=self.attention_backend, scan_layers=self.scan_layers,
                remat=self.remat, vector_dim=enc.latent_dim,
                num_classes=self.num_classes if self.decoder_label else 0)
            object.__setattr__(self, "decoder", dec)

    @property
    def latent_dim(self) -> int:
        return self.encoder.latent_dim

    def validate(self) -> "LZNConfig":
        def bad(field, why):
            raise ValueError(f"LZNConfig.{field}={getattr(self, field)!r}: {why}")
        if not (self.num_classes == 0 or is_positive_int(self.num_classes)):
            bad("num_classes", "must be an int >= 0 (0 = no label anchors)")
        if not isinstance(self.decoder_label, bool):
            bad("decoder_label", "must be True or False")
        if self.decoder_label and not (self.num_classes and self.decoder is not None):
            bad("decoder_label", "a label-conditional decoder needs a decoder and num_classes > 0")
        self.encoder.validate()
        if self.decoder is not None:
            self.decoder.validate()
            if self.decoder.learn_sigma:
                bad("decoder", "the decoder is a rectified flow (a velocity): set learn_sigma=False")
            if self.decoder.in_channels != self.encoder.channels or self.decoder.input_size != self.encoder.image_size:
                bad("decoder", f"decodes {self.decoder.input_size}x{self.decoder.input_size}x"
                               f"{self.decoder.in_channels} images but the encoder reads "
                               f"{self.encoder.image_size}x{self.encoder.image_size}x{self.encoder.channels}")
        return self


class LZN(nnx.Module):
    """encoder (+ label anchors) (+ decoder); `model(x, t, z, y=None)` runs the decoder."""

    def __init__(self, cfg: LZNConfig, *, rngs: nnx.Rngs):
        cfg = cfg.validate()
        self.cfg = cfg
        self.encoder = ImageEncoder(cfg.encoder, rngs=rngs)
        self.labels = LabelAnchors(cfg.num_classes, cfg.latent_dim, rngs=rngs) if cfg.num_classes else None
        self.decoder = DiT(cfg.decoder, rngs=rngs) if cfg.decoder is not None else None

    def component(self, name: str, *, task_frozen=None):
        """A part as its own module: "encoder" (image -> (B, latent_dim) anchor), "labels",
        "decoder", or "classifier" (an `LZNClassifier`: image -> (B, num_classes) scores). The
        classifier encodes each image with the reference images of `task_frozen()` (a training
        work dir's frozen task parts, as `from_pretrained` passes them); without them, each
        batch is its own anchor set (see unigen/lzn/classifier.py)."""
        parts = {"encoder": self.encoder, "labels": self.labels, "decoder": self.decoder}
        if name in parts:
            if parts[name] is None:
                raise ValueError(f"this LZN has no {name} (config: {self.cfg})")
            return parts[name]
        if name != "classifier":
            raise ValueError(f"component={name!r}: an LZN has components {sorted(parts) + ['classifier']}")
        if self.labels is None:
            raise ValueError("component='classifier' needs label anchors: this LZN was trained with num_classes=0")
        from unigen.lzn.classifier import LZNClassifier
        reference = None if task_frozen is None else task_frozen().get("reference")
        if reference is None:
            import warnings
            warnings.warn("no reference images stored with this model (a unigen training work dir keeps them); "
                          "the classifier uses each batch as its own anchor set (predictions then depend on "
                          "the batch)", stacklevel=2)
        return LZNClassifier(self.encoder, self.labels, reference)

    def __call__(self, x, t, z, y=None):
        if self.decoder is None:
            raise ValueError("this LZN has no decoder (LZNConfig.decoder=None: a representation model); "
                             "use model.encoder(x)")
        return self.decoder(x, t, y, z=z)


# ---- the "lzn" model kind ----------------------------------------------------------------------
def from_section(m, spec: InputSpec) -> LZNConfig:
    """`config.model`: `encoder` (ImageEncoderConfig fields), `decoder` (None, or a DiT size
    preset `name` with DiTConfig fields), `num_classes` (-1 = the data set's), `decoder_label`
    and the runtime fields; the input's side and channels, the classes and the compute dtype
    come from `spec`."""
    allowed = {"kind", "encoder", "decoder", "num_classes", "decoder_label", *RUNTIME_FIELDS}
    unknown = sorted(set(m.keys()) - allowed)
    if unknown:
        raise ValueError(f"config.model.{unknown[0]}: not an LZN field; known: {sorted(allowed)}")
    enc = dict(m.get("encoder") or {})
    for k in ("image_size", "channels", "dtype", "attention_backend", "scan_layers"):
        if k in enc:
            raise ValueError(f"config.model.encoder.{k}: set by config.data / config.model, not per network")
    enc.update(image_size=spec.side, channels=spec.channels)
    try:
        encoder = ImageEncoderConfig(**enc)
    except TypeError as e:
        raise ValueError(f"config.model.encoder: {e}") from None
    decoder = None
    if m.get("decoder"):
        dec = dict(m.decoder)
        name = dec.pop("name", "DiT-S/2")
        dec.update(input_size=spec.side, in_channels=spec.channels, learn_sigma=dec.get("learn_sigma", False))
        try:
            decoder = dit_config(name, **dec)
        except ValueError as e:
            raise ValueError(f"config.model.decoder: {e}") from None
    num_classes = m.get("num_classes", -1)
    num_classes = spec.num_classes if num_classes == -1 else num_classes
    runtime = {k: m[k] for k in RUNTIME_FIELDS if k in m}
    runtime["dtype"] = spec.dtype
    return LZNConfig(encoder=encoder, decoder=decoder, num_classes=num_classes,
                     decoder_label=bool(m.get("decoder_label", False)), **runtime).validate()


def conditions(cfg: LZNConfig) -> dict[str, Condition]:
    """The decoder's: the latent `z` (never dropped, no null) and, with decoder_label, `y`."""
    if cfg.decoder is None:
        return {}
    out = {"z": Condition(null=None)}
    if cfg.decoder_label:
        out["y"] = Condition(null=cfg.num_classes if cfg.decoder.class_dropout_prob > 0 else None,
                             dropout=cfg.decoder.class_dropout_prob)
    return out


def stacked(cfg: LZNConfig) -> tuple[str, ...]:
    if not cfg.scan_layers:
        return ()
    return ("encoder.blocks",) + (("decoder.blocks",) if cfg.decoder is not None else ())


LZN_KIND = register_model(ModelKind(
    "lzn", LZN, LZNConfig, from_section=from_section, conditions=conditions,
    runtime_fields=RUNTIME_FIELDS, stacked=stacked))
