"""Pieces the text-to-image pipeline readers share (sd3.py, flux.py): the pipeline folder's
`model_index.json` and its component subfolders, loading one component with
`unigen.pretrained.from_pretrained`, the CLIP / T5 tokenizers and the scheduler, the call
arguments (prompts, positive integers, numbers), the initial latents, the VAE decode, and the
`output_type` conversion of the decoded images.

    folder = resolve_pipeline("stabilityai/stable-diffusion-3.5-medium")   # a local folder or hub id
    index = read_model_index(folder, "StableDiffusion3Pipeline")
    sub = component_folder(folder, index, "vae", classes=("AutoencoderKL",))
    vae = load_component(sub, "vae", check=lambda m: hasattr(m, "decode"), dtype="bfloat16")

A diffusers `model_index.json` maps each component name to `[library, class]`; diffusers writes
`[null, null]` for a component saved as None (SD3 without its T5: `text_encoder_3`,
`tokenizer_3`). Every failure here is a WeightError that names the folder, the component and
what was expected there.

What the pipelines have in common, so that a user finds them alike:
  * `seed=None` draws fresh noise on every call (a new random seed), as diffusers does without a
    `generator`; an integer seed reproduces a call (noise from `jax.random.PRNGKey(seed)`, not
    torch's generator, so not diffusers' images for that seed). `latents=` gives the initial noise
    itself, and then `seed` must be None;
  * `output_type` is one of OUTPUT_TYPES: "pil" (the default) a list of PIL images, "np" a float32
    numpy (N, H, W, C) batch in [0, 1], "latent" the final latents as float32 numpy, NHWC (not
    decoded). The value returned is that itself, not diffusers' pipeline output object;
  * `mesh=` / `rules=` (from_pretrained) or `pipe.shard(mesh, rules)` run the pipeline over a device
    mesh (`Placement` below): every network's parameters are stored split as their logical axis
    names say under the rule table ("fsdp" by default: ZeRO-3, each weight split over the `fsdp`
    axis and gathered just before use), the prompt encoding, the denoising loop and the decode
    are traced under `unigen.parallel.use_rules(mesh, rules)` with the batch split over the mesh's
    batch axes where its size divides their device count (else every device computes the whole
    batch), and the results are gathered to every device (and process). The images equal the
    single-device ones up to float rounding; without a mesh nothing of this runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import unigen.parallel as parallel
from unigen.errors import ConfigError, WeightError
from unigen.files import read_json
from unigen.hub import resolve
from unigen.lora import apply_lora, load_lora, remove_lora

MODEL_INDEX = "model_index.json"
OUTPUT_TYPES = ("pil", "np", "latent")
MAX_SEQUENCE_LENGTH = 512  # T5 tokens; diffusers' SD3 and Flux check_inputs refuse more
# the transformer's runtime options that the text encoders / the VAE take too (their loaders refuse others)
TEXT_OPTIONS = ("attention_backend", "scan_layers", "remat")
VAE_OPTIONS = ("remat",)


def resolve_pipeline(path, revision: str | None = None) -> str:
    """The local folder of a pipeline path or hub repo id (unigen/hub.py: the cache, else a download)."""
    return resolve(path, revision=revision)


def read_model_index(folder: str, pipeline_class: str | tuple[str, ...]) -> dict:
    """`folder`/model_index.json, whose `_class_name` must be `pipeline_class` (one, or a tuple of
    accepted names)."""
    accepted = (pipeline_class,) if isinstance(pipeline_class, str) else tuple(pipeline_class)
    path = os.path.join(folder, MODEL_INDEX)
    index = read_json(path, missing=f"{folder}: no {MODEL_INDEX}; a diffusers pipeline folder (what "
                                    f"`{accepted[0]}.save_pretrained` writes) has one")
    name = index.get("_class_name")
    if name not in accepted:
        raise WeightError(f"{path}: _class_name {name!r}; this reads {' / '.join(map(repr, accepted))} folders")
    return index


def component_class(index: dict, name: str) -> str | None:
    """The class model_index.json names for component `name`, or None when it is absent or
    `[null, null]` (saved as None)."""
    entry = index.get(name)
    if entry is None:
        return None
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2):
        raise WeightError(f"{MODEL_INDEX}: component {name!r} = {entry!r}; diffusers writes [library, class]")
    return None if entry[1] is None else str(entry[1])


def component_folder(folder: str, index: dict, name: str, *, classes: tuple[str, ...],
                     required: bool = True) -> str | None:
    """The subfolder of component `name`, after checking model_index.json names one of `classes`
    for it. An optional component (`required=False`) that model_index.json leaves out or sets to
    None gives None; a listed component whose subfolder is missing is always an error."""
    cls = component_class(index, name)
    index_path = os.path.join(folder, MODEL_INDEX)
    if cls is None:
        if required:
            raise WeightError(f"{index_path}: no {name!r} component; {index.get('_class_name')} needs a {name}/ "
                              f"({' / '.join(classes)})")
        return None
    if cls not in classes:
        raise WeightError(f"{index_path}: component {name!r} is a {cls}; {index.get('_class_name')} reads "
                          f"{' / '.join(classes)} there")
    sub = os.path.join(folder, name)
    if not os.path.isdir(sub):
        raise WeightError(f"{folder}: model_index.json lists {name!r} ({cls}) but there is no {name}/ folder; "
                          f"the download may be incomplete")
    return sub


def load_component(sub: str, name: str, *, kinds: tuple[str, ...] = (), check=None, expected: str = "",
                   **overrides):
    """The module in component folder `sub` through `unigen.pretrained.from_pretrained` (its
    registered diffusers / transformers loader), with runtime `overrides` (dtype, ...).
    `kinds`: the `_class_name` (diffusers) or `model_type` (transformers) its config.json must
    have, checked before any weight is read. `check(module)` -> bool rejects a module of the
    wrong kind with a WeightError naming `name` and `expected`."""
    from unigen.pretrained import from_pretrained  # the front of the loaders; imported late (cycles)

    if kinds:
        config = read_json(os.path.join(sub, "config.json"),
                           missing=f"{sub}: no config.json, so the pipeline's {name} cannot be read")
        field = "_class_name" if "_class_name" in config else "model_type"
        if config.get(field) not in kinds:
            raise WeightError(f"{sub}/config.json: {field} {config.get(field)!r}; the pipeline's {name} is a "
                              f"{' / '.join(map(repr, kinds))}")
    model = _as_component(name, from_pretrained, sub, **overrides)
    if check is not None and not check(model):
        raise WeightError(f"{sub}: component {name!r} loaded as a {type(model).__name__}; expected {expected}")
    return model


def load_clip_tokenizer(sub: str, name: str = "tokenizer"):
    """The CLIP tokenizer of a pipeline's tokenizer folder (unigen/text/clip_tokenizer.py)."""
    from unigen.text.clip_tokenizer import CLIPTokenizer

    return _as_component(name, CLIPTokenizer.from_folder, sub)


def load_t5_tokenizer(sub: str, name: str = "tokenizer_3"):
    """The T5 tokenizer of a pipeline's tokenizer folder (unigen/text/t5_tokenizer.py)."""
    from unigen.text.t5_tokenizer import T5Tokenizer

    return _as_component(name, T5Tokenizer.from_folder, sub)


def _as_component(name: str, load, /, *args, **kwargs):
    """load(*args, **kwargs), its WeightError prefixed with the component's name."""
    try:
        return load(*args, **kwargs)
    except WeightError as e:
        raise WeightError(f"component {name}/: {e}") from None


def load_scheduler(folder: str, index: dict, name: str = "scheduler"):
    """The flow-match scheduler of component `name` (a class unigen.pipelines.flow_match reads)."""
    from unigen.pipelines.flow_match import READERS, scheduler_from_config

    return scheduler_from_config(component_folder(folder, index, name, classes=tuple(READERS)))


def split_runtime(dtype: str | None, runtime: dict) -> tuple[dict, dict, dict]:
    """(transformer, text encoder, VAE) options from a pipeline's `dtype` (every network's compute
    dtype; None: the loaders' default) and its runtime options, all the transformer's: each
    other network gets the ones its loader takes (the loaders refuse any other)."""
    common = {} if dtype is None else {"dtype": dtype}
    text, vae = ({**common, **{k: v for k, v in runtime.items() if k in keys}} for keys in (TEXT_OPTIONS, VAE_OPTIONS))
    return {**common, **runtime}, text, vae


# ---- sharding over a device mesh ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a pipeline's networks and batches live: one device (`mesh` None: nothing is placed,
    no rules are active) or a device mesh under a rule table. Hashable, so the compiled functions
    take it as a static argument: each placement traces its own functions (the rules act while a
    function is traced, so a trace made without them must not be reused with them).

        placement = Placement.of({"fsdp": -1}, "fsdp")   # a Mesh, or a mesh spec for make_mesh
        placement.place(module)                          # params stored as their logical names say
        with placement.use_rules():                      # inside the traced function
            ...
        x = placement.batch(x)                           # leading axis split where it divides
    """

    mesh: Mesh | None = None
    rules: tuple = ()

    @classmethod
    def of(cls, mesh=None, rules="fsdp") -> "Placement":
        """A placement from a `jax.sharding.Mesh` or a mesh spec ({"fsdp": -1, "tensor": 2} or a
        config with data / fsdp / tensor / context fields: unigen.parallel.make_mesh over every
        device), and a rule preset name ("dp", "fsdp", "fsdp_tp", "cp") or table. mesh None: one
        device."""
        if mesh is None:
            return cls()
        if not isinstance(mesh, Mesh):
            mesh = parallel.make_mesh(mesh)
        try:
            table = parallel.get_rules(rules)
        except ValueError as e:
            raise ConfigError(f"rules={rules!r}: {e}") from None
        return cls(mesh, table)

    @property
    def sharded(self) -> bool:
        return self.mesh is not None

    def use_rules(self):
        """The rule table active for `constrain` while a function is traced (nothing without a mesh)."""
        return parallel.use_rules(self.mesh, self.rules) if self.sharded else contextlib.nullcontext()

    def place(self, module: nnx.Module) -> dict[str, Any]:
        """Move `module`'s variables, in place, to the shardings their logical axis names give under
        the rules (unigen.parallel.state_shardings: a variable without names, or a dimension its
        mesh axes do not divide, stays whole); without a mesh, onto the default device. Returns
        {"unmatched": [...], "indivisible": [...]} of unigen.parallel.ShardingReport."""
        state = nnx.state(module)
        if not self.sharded:
            nnx.update(module, jax.device_put(state, jax.local_devices()[0]))
            return {"unmatched": [], "indivisible": []}
        shardings, report = parallel.plan_shardings(state, self.mesh, self.rules)
        nnx.update(module, jax.device_put(state, shardings))
        return {"unmatched": report.unmatched, "indivisible": report.indivisible}

    def batch_ways(self) -> int:
        """How many ways the mesh splits a batch (1 without a mesh)."""
        return parallel.batch_ways(self.mesh, self.rules) if self.sharded else 1

    def batch(self, x):
        """`x` (numpy or jax) placed for a compiled call: its leading (batch) axis split over the
        mesh's batch axes when they divide it, else whole on every device; without a mesh, a jax
        array as given (numpy: on the default device)."""
        if not self.sharded:
            return jnp.asarray(x)
        ndim = np.ndim(x)
        if ndim and np.shape(x)[0] % self.batch_ways() == 0:
            sharding = parallel.batch_sharding(self.mesh, self.rules, ndim)
        else:
            sharding = NamedSharding(self.mesh, P())
        if isinstance(x, jax.Array):
            if x.is_fully_addressable:
                return jax.device_put(x, sharding)
            x = x.addressable_data(0)  # a global array replicated over processes (gathered): its local copy
        value = np.asarray(x)
        value = value.astype(jax.dtypes.canonicalize_dtype(value.dtype), copy=False)  # int64 -> int32, as jnp.asarray
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    def gather(self, tree):
        """Inside a traced function: every array of `tree` whole on every device of the mesh (so
        each process can read the results); the identity without a mesh."""
        if not self.sharded:
            return tree
        whole = NamedSharding(self.mesh, P())
        return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, whole), tree)


class Shardable:
    """`shard(mesh, rules)` and LoRA adapters for a pipeline (SD3, Flux): it lists its networks
    (`networks()`: {name: module or None}) and re-reads their states after they move or change
    (`_split_networks()`); its compiled functions take `self.placement` as a static argument and
    trace under `placement.use_rules()`."""

    placement: Placement = Placement()
    sharding_report: dict = {}
    loras: tuple = ()  # the (Lora, scale) pairs merged into the transformer, in order

    def load_lora_weights(self, path, scale: float = 1.0):
        """Merge the diffusers / PEFT LoRA file at `path` into the transformer, weighted by
        `scale` (diffusers' `load_lora_weights` + `fuse_lora(lora_scale=scale)`; unigen.lora).
        The compiled functions are reused (the weights are their arguments). Returns the pipeline."""
        scale = number(scale, "scale")
        lora = load_lora(os.fspath(path), self.transformer)
        apply_lora(self.transformer, lora, scale)
        self.loras = (*self.loras, (lora, scale))
        return self._settle()

    def unload_lora_weights(self):
        """Take every merged LoRA out again (the base weights, up to float rounding). Returns the pipeline."""
        for lora, scale in reversed(self.loras):
            remove_lora(self.transformer, lora, scale)
        self.loras = ()
        return self._settle()

    def _settle(self):
        # A merge computes new arrays: place them as the rules say again, then re-read the states.
        if self.placement.sharded:
            self.placement.place(self.transformer)
        self._split_networks()
        return self

    def networks(self) -> dict:
        raise NotImplementedError

    def _split_networks(self) -> None:
        raise NotImplementedError

    def shard(self, mesh, rules="fsdp"):
        """Run this pipeline over `mesh` (a jax Mesh, or a spec such as {"fsdp": -1} that
        unigen.parallel.make_mesh builds over every device) under `rules` (a preset of
        unigen.parallel.PRESETS, default "fsdp", or a rule table): every network's parameters move
        to the shardings their logical axis names give (see the module docstring); mesh None
        brings them back to one device. Returns the pipeline. `sharding_report` then lists, per
        network, the variables stored whole for want of names ("unmatched") or of divisibility."""
        placement = Placement.of(mesh, rules)
        self.sharding_report = {name: placement.place(module)
                                for name, module in self.networks().items() if module is not None}
        self.placement = placement
        self._split_networks()
        return self


# ---- call arguments -------------------------------------------------------------------------------------
def as_prompts(prompt, what: str = "prompt", batch: int | None = None) -> list[str]:
    """A prompt or a list of prompts as a non-empty list of strings; with `batch`, exactly that many."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ConfigError(f"{what}={_short(prompt)}: give a string or a non-empty list of strings")
    if batch is not None and len(prompts) != batch:
        raise ConfigError(f"{what} has {len(prompts)} prompt(s) but prompt has {batch}: give one per prompt")
    return list(prompts)


def positive_int(value, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}={value!r}: give a positive integer")
    return int(value)


def sequence_length(value, name: str = "max_sequence_length") -> int:
    """A T5 prompt length: a positive integer, at most MAX_SEQUENCE_LENGTH."""
    length = positive_int(value, name)
    if length > MAX_SEQUENCE_LENGTH:
        raise ConfigError(f"{name}={length}: at most {MAX_SEQUENCE_LENGTH} (diffusers' limit)")
    return length


def number(value, name: str) -> float:
    """A real number (int or float; not a bool or a string) as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name}={value!r}: give a number")
    return float(value)


def initial_latents(shape: tuple[int, ...], seed=None, latents=None, *, packed_shape=None) -> np.ndarray:
    """float32 initial latents of `shape` (NHWC): the given `latents` (checked), else standard
    normal noise drawn from `jax.random.PRNGKey(seed)`; seed None: a fresh random seed (see the
    module docstring). `packed_shape`: a second layout given latents may have (Flux: diffusers'
    packed (N, h/2 * w/2, 4C)), returned as given; the caller tells the two apart by shape."""
    if latents is not None:
        if seed is not None:
            raise ConfigError("pass seed= or latents=, not both: latents are the initial noise itself")
        x = np.asarray(latents, np.float32)
        if x.shape == tuple(shape) or (packed_shape is not None and x.shape == tuple(packed_shape)):
            return x
        other = (" (diffusers' NCHW latents: transpose(0, 2, 3, 1))" if packed_shape is None else
                 f", or {tuple(packed_shape)} packed as diffusers takes them")
        raise ConfigError(f"latents of shape {x.shape}: expected {tuple(shape)} (N, h, w, C), channels last{other}")
    if seed is None:
        seed = secrets.randbits(31)
    elif not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ConfigError(f"seed={seed!r}: give an integer (or None for fresh noise)")
    key = jax.random.PRNGKey(int(seed))
    return np.asarray(jax.random.normal(key, tuple(shape), jnp.float32))


# ---- decoding and output --------------------------------------------------------------------------------
def decode_images(vae, latents):
    """Images in [0, 1] (float32) of final latents, as diffusers: vae.decode(latents /
    scaling_factor + shift_factor), then VaeImageProcessor.postprocess's (x / 2 + 0.5) clipped."""
    c = vae.cfg
    images = vae.decode(latents / float(c.scaling_factor) + float(c.shift_factor or 0.0))
    return jnp.clip(images.astype(jnp.float32) / 2 + 0.5, 0.0, 1.0)


def check_output_type(output_type: str) -> str:
    if output_type not in OUTPUT_TYPES:
        raise ConfigError(f"output_type={output_type!r}: use one of {list(OUTPUT_TYPES)}")
    return output_type


def to_output(images, output_type: str):
    """Decoded images (N, H, W, C) in [0, 1] (or, for "latent", the final latents) as `output_type`
    asks: "np" / "latent" a float32 numpy batch, "pil" a list of PIL images (rounded as diffusers'
    `numpy_to_pil`: round(x * 255))."""
    images = np.asarray(images, np.float32)
    if check_output_type(output_type) != "pil":
        return images
    from PIL import Image

    pixels = np.round(images * 255).astype(np.uint8)
    if pixels.shape[-1] == 1:
        return [Image.fromarray(p[..., 0], mode="L") for p in pixels]
    return [Image.fromarray(p) for p in pixels]


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
