"""Latent Zoning Network tasks (Lin et al. 2025; reference: microsoft/latent-zoning-networks,
`lzn/trainer/`): one latent space for generation, representation and classification.

Each batch's anchors a = E(x) (the image encoder of an "lzn" model, unigen/models/lzn.py)
are carried to latents z by the latent flow of the batch itself (`unigen.lzn.flow.encode`,
DPM-Solver++(2M), 20 steps, start noise N(0, I) * noise_scale). Under a batch-sharded jit the
anchor set is the global batch: XLA gathers it (the reference's all_gather).

  lzn_generation      (GenerationTrainer) the decoder, a rectified flow on images conditioned
                      on z, is trained end to end with the encoder: loss = recon_weight * RF
                      loss. Sampling draws z ~ N(0, I) and decodes it. With label anchors
                      (model.num_classes > 0, the reference's `conditional=True`) the label
                      alignment loss is added: z is reversed through the label anchors
                      (Euler, 100 steps, log prior = the batch's class frequencies) and
                      -max_t p(label) after the first 20% of steps is minimised
                      (`unigen.lzn.alignment_loss`); a class is then sampled by drawing z
                      in its zone: the label anchor's latent from N(0, I) start noise
                      (`get_latent_from_label`), decoded with the label when decoder_label.
  lzn_classification  the same losses; the model must have label anchors, the decoder is
                      optional (without it, a pure classifier). Evaluation adds the test
                      accuracy of `unigen.lzn.LZNClassifier` (and class-conditional
                      generation read by the digits classifier when there is a decoder).
  lzn_representation  (ContrastiveTrainer) the encoder alone: two augmented views per image
                      (grain, unigen.data.augment); view A's latents are reversed through
                      view B's anchors and must land in the same image's zone
                      (`contrastive_alignment_loss`, -log max_t p, noise_scale 0.45).
                      Evaluation: linear probes on the anchors, the pre-head features and the
                      token states, each next to the same probe on the untrained encoder, and
                      a raw-pixel probe, all measured in the same run (unigen.eval.probe).

Options (`config.lzn`, each with the reference's default): encode_steps 20, encode_solver
"dpm++2m", noise_scale 1.0 (0.45 for contrastive), label_steps 100, label_solver "euler",
cut 0.2, recon_weight 1, label_weight 1, label_loss_kind "prob" (-max p; "log": -log max p,
stronger on misassigned examples), contrastive_kind "log", symmetric False (True also
aligns B -> A), reference_size (classifier's reference images; 0 = the batch size), augment
(DigitAugment fields).
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from unigen.diffusion.objective import per_example, split_keys
from unigen.errors import ConfigError
from unigen.lzn import flow
from unigen.lzn.alignment import KINDS, alignment_loss, contrastive_alignment_loss
from unigen.config_sections import config_section, read_section
from unigen.tasks.base import Task, register_task
from unigen.tasks.diffusion import DiffusionTask

LATENT_STREAM = 0x1A7E  # fold_in tag of a sample's latent noise (apart from the sampler's noise)


@config_section("lzn")
@dataclasses.dataclass(frozen=True)
class LZNOptions:
    encode_steps: int = 20
    encode_solver: str = "dpm++2m"
    noise_scale: float = 1.0
    label_steps: int = 100
    label_solver: str = "euler"
    cut: float = 0.2
    recon_weight: float = 1.0
    label_weight: float = 1.0
    label_loss_kind: str = "prob"
    contrastive_kind: str = "log"
    symmetric: bool = False
    reference_size: int = 0
    augment: tuple = ()

    @classmethod
    def from_config(cls, cfg, **defaults) -> "LZNOptions":
        opts = read_section(cls, cfg, **defaults)
        if not isinstance(opts.augment, tuple):  # a dict of augmentation -> strength: sorted pairs (hashable)
            opts = dataclasses.replace(opts, augment=tuple(sorted(dict(opts.augment).items())))
        opts.validate()
        return opts

    def validate(self):
        def need(ok, field, fix):
            if not ok:
                raise ConfigError(f"config.lzn.{field}={getattr(self, field)!r}: {fix}")
        for f in ("encode_steps", "label_steps"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) >= 1, f, "must be a positive int")
        for f in ("encode_solver", "label_solver"):
            need(getattr(self, f) in flow.SOLVERS, f, f"use one of {flow.SOLVERS}")
        need(self.noise_scale >= 0, "noise_scale", "must be >= 0")
        need(0 <= self.cut < 1, "cut", "must be in [0, 1): the fraction of reverse steps dropped")
        need(self.recon_weight >= 0, "recon_weight", "must be >= 0")
        need(self.label_weight >= 0, "label_weight", "must be >= 0")
        need(self.contrastive_kind in KINDS, "contrastive_kind", f"use one of {KINDS}")
        need(self.label_loss_kind in KINDS, "label_loss_kind", f"use one of {KINDS}")
        need(isinstance(self.symmetric, bool), "symmetric", "must be True or False")
        need(isinstance(self.reference_size, int) and self.reference_size >= 0, "reference_size",
             "must be an int >= 0 (0 = the training batch size)")

    def digit_augment(self):
        from unigen.data.augment import DigitAugment
        try:
            return DigitAugment(**dict(self.augment))
        except TypeError as e:
            raise ConfigError(f"config.lzn.augment: {e}") from None


def _check_model(cfg, model_kind, model_cfg, *, decoder: bool | None, labels: bool):
    name = cfg.task.name
    if model_kind.name != "lzn":
        raise ConfigError(f"config.task.name={name!r} trains an LZN: set config.model.kind='lzn' "
                          f"(got {model_kind.name!r})")
    if cfg.data.get("latent_encoder"):
        raise ConfigError(f"config.data.latent_encoder={cfg.data.latent_encoder!r}: the LZN tasks train on pixels "
                          f"(their encoder reads images); set ''")
    if decoder is True and model_cfg.decoder is None:
        raise ConfigError(f"config.model.decoder is empty: task {name!r} trains a decoder (give a DiT preset)")
    if labels and not model_cfg.num_classes:
        raise ConfigError(f"config.model.num_classes=0: task {name!r} needs label anchors "
                          f"(-1 = the data set's classes; config.data.num_classes={cfg.data.num_classes})")


def standard_normal(rng, n: int, dim: int) -> jax.Array:
    """(n, dim) N(0, I) from per-example keys (or one key)."""
    return per_example(rng, n, lambda k: jax.random.normal(k, (dim,)))


def image_latents(model, x, noise, opts: LZNOptions):
    """(z, anchors): the batch's anchors E(x) and their latents under the batch's own flow."""
    anchors = model.encoder(x)
    z = flow.encode(anchors, anchors, noise=noise, steps=opts.encode_steps, solver=opts.encode_solver)
    return z, anchors


def batch_log_prior(labels, num_classes: int):
    """log of the batch's class frequencies (the reference's `get_class_weights`): a class
    absent from the batch gets -inf, i.e. its label anchor is out of this step's flow."""
    counts = jnp.bincount(labels, length=num_classes).astype(jnp.float32)
    return jnp.log(counts / counts.sum())


def label_alignment(model, z, labels, opts: LZNOptions, *, log_prior=None):
    """(loss, last-step target posterior (N,)): reverse z through the label anchors."""
    _, logp = flow.reverse(z, model.labels(), log_prior=log_prior, steps=opts.label_steps, solver=opts.label_solver,
                           targets=labels, log=True)
    loss, _ = alignment_loss(logp, cut=opts.cut, kind=opts.label_loss_kind, log=True)
    return loss, jnp.exp(logp[-1])


def label_zone_latents(label_anchors, labels, noise, opts: LZNOptions):
    """Latents in the zones of `labels`: each label anchor carried by the label flow from its
    start noise (the reference's `get_latent_from_label`)."""
    return flow.encode(label_anchors[labels], label_anchors, noise=noise, steps=opts.label_steps,
                       solver=opts.label_solver)


@register_task("lzn_generation")
class LZNGenerationTask(DiffusionTask):
    needs_decoder: bool | None = True
    needs_labels = False

    def __init__(self, cfg, model_kind, model_cfg):
        _check_model(cfg, model_kind, model_cfg, decoder=self.needs_decoder, labels=self.needs_labels)
        if model_cfg.decoder is not None:
            super().__init__(cfg, model_kind, model_cfg)
        else:  # a pure classifier: nothing to sample
            Task.__init__(self, cfg, model_kind, model_cfg)
            self.process, self.sample_shape = None, (cfg.data.image_size, cfg.data.image_size, cfg.data.channels)
        self.opts = LZNOptions.from_config(cfg)
        self.latent_dim = model_cfg.latent_dim
        self.num_classes = model_cfg.num_classes

    @property
    def labelled(self) -> bool:
        return self.num_classes > 0 and self.process is not None

    # ---- training -----------------------------------------------------------------------------
    def loss(self, model, batch, rng, frozen):
        x, labels = batch["image"], batch["label"]
        k_noise, k_drop, k_loss = split_keys(rng, 3)
        noise = self.opts.noise_scale * standard_normal(k_noise, x.shape[0], self.latent_dim)
        z, anchors = image_latents(model, x, noise, self.opts)
        total, metrics = 0.0, {"anchor_norm": jnp.sqrt(jnp.mean(jnp.sum(anchors * anchors, axis=-1)))}
        if self.process is not None:
            cond = {"z": z} | ({"y": labels} if "y" in self.conditions else {})
            losses = self.process.losses(model, x, k_loss, **self.drop_conditions(cond, k_drop))
            recon = losses["loss"].mean()
            total = total + self.opts.recon_weight * recon
            metrics["recon_loss"] = recon
        if self.num_classes:
            label_loss, p_last = label_alignment(model, z, labels, self.opts,
                                                 log_prior=batch_log_prior(labels, self.num_classes))
            total = total + self.opts.label_weight * label_loss
            metrics.update(label_loss=label_loss, label_posterior=p_last.mean())
        return total, metrics

    # ---- sampling -----------------------------------------------------------------------------
    def conditions_for_labels(self, labels):
        return {"y": np.asarray(labels, np.int32)} if self.labelled else {}

    def prepare_conditions(self, model, cond, keys):
        """Each sample's latent z from its own key: N(0, I), or in the zone of its label `y`;
        a given `z` is kept (e.g. an image's latent, to reconstruct it)."""
        cond = dict(cond)
        if "z" not in cond:
            noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, LATENT_STREAM),
                                                         (self.latent_dim,)))(keys)
            if "y" in cond and model.labels is not None:
                cond["z"] = label_zone_latents(model.labels(), cond["y"], noise, self.opts)
            elif model.cfg.decoder_label:
                raise ValueError("this LZN decodes with the label: pass conditions {'y': labels}")
            else:
                cond["z"] = noise
        if not model.cfg.decoder_label:
            cond.pop("y", None)
        return cond

    # ---- evaluation ---------------------------------------------------------------------------
    def frozen(self, seed):
        """The classifier's reference images: the first `reference_size` training images."""
        if not self.num_classes:
            return {}
        return {"reference": jnp.asarray(self.reference_images())}

    def reference_images(self) -> np.ndarray:
        from unigen.data.pipeline import make_dataset
        d = self.cfg.data
        size = self.opts.reference_size or self.cfg.train.batch_size
        ds = make_dataset(d.name, "train", batch_size=size, image_size=d.image_size, seed=0, shuffle=False,
                          num_epochs=1, data_dir=d.data_dir or None)
        return np.asarray(next(iter(ds))["image"], np.float32)

    def evaluate(self, generate, workdir, model=None):
        rows = {}
        if self.process is not None:
            rows = super().evaluate(generate, workdir) or {}
        if self.num_classes and model is not None and self.cfg.data.name == "digits":
            rows["classification"] = classification_report(model, self.reference_images(), self.opts,
                                                           batch_size=self.cfg.train.batch_size)
            print(format_classification(rows["classification"]), flush=True)
            with open(os.path.join(workdir, "eval.json"), "w") as f:
                json.dump(rows, f, indent=2)
        return rows or None


@register_task("lzn_classification")
class LZNClassificationTask(LZNGenerationTask):
    needs_decoder = None  # optional: with a decoder it also generates each class
    needs_labels = True


def _digits(split):
    from unigen.eval.probe import digits_pixels
    x, y = digits_pixels(split)
    return x.reshape(-1, 8, 8, 1), y


def classification_report(model, reference, opts: LZNOptions, *, batch_size: int, chunk: int = 128) -> dict:
    """Test and train accuracy of the LZN classifier: with the reference images (per image,
    batch-independent) and with each batch of `batch_size` as its own anchor set."""
    from unigen.lzn.classifier import LZNClassifier
    from flax import nnx

    options = dict(encode_steps=opts.encode_steps, encode_solver=opts.encode_solver, label_steps=opts.label_steps,
                   label_solver=opts.label_solver)
    out = {}
    for mode, ref, size in (("reference", reference, chunk), ("batch", None, batch_size)):
        clf = LZNClassifier(model.encoder, model.labels, ref, **options)
        graphdef, state = nnx.split(clf)
        predict = jax.jit(lambda s, x: nnx.merge(graphdef, s).predict(x))
        for split in ("test", "train"):
            x, y = _digits(split)
            pred = np.concatenate([np.asarray(predict(state, x[i:i + size])) for i in range(0, len(x), size)])
            out[f"{split}_accuracy_{mode}"] = float(np.mean(pred == y))
    out["n_test"], out["reference_size"] = int(len(_digits("test")[1])), int(len(reference))
    return out


def format_classification(r: dict) -> str:
    return (f"LZN classification (digits): test accuracy {r['test_accuracy_reference']:.4f} "
            f"(per image, {r['reference_size']} reference anchors), {r['test_accuracy_batch']:.4f} "
            f"(each batch its own anchor set); train {r['train_accuracy_reference']:.4f} / "
            f"{r['train_accuracy_batch']:.4f}")


@register_task("lzn_representation")
class LZNRepresentationTask(Task):
    process = None

    def __init__(self, cfg, model_kind, model_cfg):
        super().__init__(cfg, model_kind, model_cfg)
        _check_model(cfg, model_kind, model_cfg, decoder=None, labels=False)
        self.opts = LZNOptions.from_config(cfg, noise_scale=0.45)
        self.augment = self.opts.digit_augment()
        self.latent_dim = model_cfg.latent_dim
        self.sample_shape = (cfg.data.image_size, cfg.data.image_size, cfg.data.channels)

    def dataset(self, split, *, batch_size, seed, shard, shards):
        from unigen.data.pipeline import make_dataset
        d = self.cfg.data
        return make_dataset(d.name, split, batch_size=batch_size, image_size=d.image_size, seed=seed,
                            process_index=shard, process_count=shards, data_dir=d.data_dir or None,
                            two_views=self.augment)

    def loss(self, model, batch, rng, frozen):
        a, b = model.encoder(batch["view_a"]), model.encoder(batch["view_b"])
        noise = self.opts.noise_scale * standard_normal(rng, a.shape[0], self.latent_dim)
        loss, per = contrastive_alignment_loss(a, b, noise=noise, steps=self.opts.encode_steps,
                                               solver=self.opts.encode_solver, cut=self.opts.cut,
                                               kind=self.opts.contrastive_kind, symmetric=self.opts.symmetric)
        return loss, {"alignment_loss": loss, "anchor_norm": jnp.sqrt(jnp.mean(jnp.sum(a * a, axis=-1)))}

    def evaluate(self, generate, workdir, model=None):
        if model is None or self.cfg.data.name != "digits":
            print("no evaluation: the linear probe protocol is for the digits data set")
            return None
        at_init = self.model_kind.build(self.model_cfg, self.cfg.seed).encoder  # the untrained control
        rows = representation_report(model.encoder, batch_size=self.cfg.eval.batch_size, at_init=at_init)
        print(format_representation(rows), flush=True)
        with open(os.path.join(workdir, "eval.json"), "w") as f:
            json.dump(rows, f, indent=2)
        return rows


def representation_report(encoder, *, batch_size: int = 500, at_init=None) -> dict:
    """Linear probes (unigen.eval.probe, penalty chosen on held-out train data) on the
    encoder's anchors, pooled pre-head features and flattened token states (the reference
    probes "head" and "no_head"), and on raw pixels, for the digits splits; `at_init` (the
    same encoder untrained) gives each probe's control."""
    from unigen.eval.probe import linear_probe, raw_pixel_baseline

    strip = lambda r: {k: v for k, v in r.items() if k != "selection"}  # noqa: E731
    rows = {}
    for name, enc in (("", encoder), ("_at_init", at_init)):
        if enc is None:
            continue
        train, y_tr = _encoder_outputs(enc, "train", batch_size)
        test, y_te = _encoder_outputs(enc, "test", batch_size)
        for kind in ("anchors", "features", "tokens"):
            rows[kind + name] = strip(linear_probe(train[kind], y_tr, test[kind], y_te))
    rows["raw_pixels"] = strip(raw_pixel_baseline())
    return {"linear_probe": rows}


def _encoder_outputs(encoder, split, batch_size):
    """({anchors, features (pre-head, pooled), tokens (the final token states, flattened)},
    labels) of a digits split, as numpy."""
    from flax import nnx

    graphdef, state = nnx.split(encoder)

    def run(s, x):
        enc = nnx.merge(graphdef, s)
        tokens = enc.tokens(x).astype(jnp.float32)
        return {"anchors": enc(x), "features": tokens.mean(axis=1), "tokens": tokens.reshape(x.shape[0], -1)}

    run = jax.jit(run)
    x, y = _digits(split)
    parts = [run(state, x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}, y


def format_representation(rows: dict) -> str:
    lines = ["linear probe on digits (test accuracy, same run):"]
    for name, r in rows["linear_probe"].items():
        lines.append(f"  {name:<17} {r['test_acc']:.4f}  (train {r['train_acc']:.4f}, {r['num_features']} "
                     f"features, l2 {r['l2']:g})")
    return "\n".join(lines)
