"""UniDiffuser's sampling modes as model wrappers (Bao et al. 2023, §3.2 and appendix; diffusers'
`UniDiffuserPipeline._get_noise_pred`), so that every mode runs through the shared samplers.

One network eps_theta(x_{t_x}, y_{t_y}, t_x, t_y) over an image modality x and a text modality y
gives five samplers by choosing the timesteps:

    mode    moves    network call (t = the sampler's time, T = num_timesteps)
    joint   x, y     (x_t, y_t, t, t)
    t2i     x        (x_t, y_0, t, 0)        y given, clean
    i2t     y        (x_0, y_t, 0, t)        x given, clean
    image   x        (x_t, n, t, T)          n ~ N(0, I): the text marginalised out
    text    y        (n, y_t, T, t)

Guidance needs no extra training: the unconditional branch is the same network with the condition
replaced by noise at t = T, and guided = uncond + s (cond - uncond) (diffusers'
s * cond + (1 - s) * uncond). Joint sampling guides each modality against the other one's
marginal: the image part uses (x_t, n, t, T), the text part (n, x..., T, t). The branches of one
step run as one network call on a stacked batch. The replacement noise is drawn afresh at every
step, as the reference does, from each sample's own key folded with the step's time, so a
sample depends on its key only.

A sampler moves one array: the moving modalities' parts are flattened and concatenated
(`Layout.pack`), (B, D), and split back (`Layout.unpack`) around each network call.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from unigen.diffusion.objective import per_example

IMAGE, TEXT = "image", "text"
MODES = ("joint", "t2i", "i2t", "image", "text")
MOVES = {"joint": (IMAGE, TEXT), "t2i": (IMAGE,), "i2t": (TEXT,), "image": (IMAGE,), "text": (TEXT,)}
GIVEN = {"t2i": TEXT, "i2t": IMAGE}          # the clean condition of a conditional mode
GUIDED = ("joint", "t2i", "i2t")             # modes with (training-free) classifier-free guidance


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: use one of {MODES} (joint; t2i = text to image; i2t = image to text; "
                         f"image / text = the marginals)")
    return mode


@dataclasses.dataclass(frozen=True)
class Layout:
    """The parts of each modality and their shapes (without the batch axis), e.g.
    Layout(((IMAGE, (("img", (8, 8, 1)), ("clip_img", (64,)))), (TEXT, (("text", (16, 8)),))))."""
    modalities: tuple

    def parts(self, modality: str) -> tuple:
        for name, parts in self.modalities:
            if name == modality:
                return parts
        raise KeyError(f"no modality {modality!r} in {[n for n, _ in self.modalities]}")

    def part_names(self, modality: str) -> tuple[str, ...]:
        return tuple(name for name, _ in self.parts(modality))

    def size(self, modalities) -> int:
        return sum(math.prod(shape) for m in modalities for _, shape in self.parts(m))

    def pack(self, values: dict, modalities) -> jax.Array:
        """(B, D): the parts of `modalities` (values: modality -> tuple of (B, ...) parts) flattened
        and concatenated in layout order."""
        flat = []
        for m in modalities:
            for (name, shape), v in zip(self.parts(m), values[m]):
                if tuple(v.shape[1:]) != tuple(shape):
                    raise ValueError(f"{m} part {name!r}: shape {tuple(v.shape[1:])}, the layout says {shape}")
                flat.append(v.reshape(v.shape[0], -1))
        return jnp.concatenate(flat, axis=1)

    def unpack(self, x: jax.Array, modalities) -> dict:
        """The inverse of `pack`: modality -> tuple of (B, ...) parts."""
        if x.ndim != 2 or x.shape[1] != self.size(modalities):
            raise ValueError(f"packed array of shape {x.shape}: expected (B, {self.size(modalities)}) for {modalities}")
        out, at = {}, 0
        for m in modalities:
            parts = []
            for _, shape in self.parts(m):
                n = math.prod(shape)
                parts.append(x[:, at:at + n].reshape((x.shape[0], *shape)))
                at += n
            out[m] = tuple(parts)
        return out


def _noise(layout: Layout, modality: str, noise_key, t):
    """Pure noise for every part of `modality`, one draw per (sample, step): N(0, I) from
    fold_in(sample key, t)."""
    # The time's float32 bits: distinct for every step of any grid (integer or flow model times).
    bits = jax.lax.bitcast_convert_type(t.astype(jnp.float32), jnp.uint32)
    keys = jax.vmap(jax.random.fold_in)(noise_key, bits)
    first = [name for name, _ in layout.modalities].index(modality) * 1000  # distinct streams per part
    out = []
    for j, (_, shape) in enumerate(layout.parts(modality)):
        out.append(per_example(keys, keys.shape[0], lambda k, j=first + j, shape=shape:
                               jax.random.normal(jax.random.fold_in(k, j), shape)))
    return tuple(out)


def _cat(*trees):
    return jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *trees)


def _split(tree, n):
    return [jax.tree.map(lambda a, i=i: jnp.split(a, n, axis=0)[i], tree) for i in range(n)]


def _mix(scale, cond, uncond):
    return jax.tree.map(lambda c, u: u + scale * (c - u), cond, uncond)


def mode_eps(network, mode: str, layout: Layout, x, t, *, given: dict | None = None, noise_key=None,
             scale: float = 1.0, clean_time: float = 0.0, noise_time: float = 1000.0):
    """The noise prediction (B, D) of `mode` for the packed moving modalities x (B, D) at model time
    t (B,) (over a flow: the velocity; the wrapper is linear in the network's outputs).
    `network(parts, times) -> eps` takes and returns modality -> tuple of parts, times
    modality -> (B,); `given` holds the clean condition's parts (t2i: the text, i2t: the image);
    `noise_key` (B, 2) keys for the replacement noise (marginals and guidance). A clean condition
    gets model time `clean_time`, a modality replaced by noise `noise_time` (diffusers: 0 and
    max_timestep = 1000; `objective.condition_times(process)`)."""
    check_mode(mode)
    moving = MOVES[mode]
    x_parts = layout.unpack(x, moving)
    b = x.shape[0]
    t = jnp.broadcast_to(jnp.asarray(t), (b,))
    zero, top = jnp.full_like(t, clean_time), jnp.full_like(t, noise_time)
    need_noise = mode in ("image", "text") or (mode in GUIDED and scale != 1.0)
    if need_noise and noise_key is None:
        raise ValueError(f"mode {mode!r} replaces a modality by noise: pass noise_key (one key per sample)")
    other = {IMAGE: TEXT, TEXT: IMAGE}

    if mode in GIVEN:
        cond_name = GIVEN[mode]
        if given is None or cond_name not in given:
            raise ValueError(f"mode {mode!r} needs the clean {cond_name} as its condition (given={{{cond_name!r}: ...}})")
        clean = tuple(given[cond_name])
        moving_name = other[cond_name]
        times = {moving_name: t, cond_name: zero}
        if scale == 1.0:
            return layout.pack(network({moving_name: x_parts[moving_name], cond_name: clean}, times), moving)
        noise = _noise(layout, cond_name, noise_key, t)
        both = network({moving_name: _cat(x_parts[moving_name], x_parts[moving_name]), cond_name: _cat(clean, noise)},
                       {moving_name: _cat(t, t), cond_name: _cat(zero, top)})
        c, u = _split(both[moving_name], 2)
        return layout.pack({moving_name: _mix(scale, c, u)}, moving)

    if mode in (IMAGE, TEXT):  # a marginal: the other modality is noise at t = T
        gone = other[mode]
        out = network({mode: x_parts[mode], gone: _noise(layout, gone, noise_key, t)}, {mode: t, gone: top})
        return layout.pack({mode: out[mode]}, moving)

    # joint
    times = {IMAGE: t, TEXT: t}
    if scale == 1.0:
        return layout.pack(network(x_parts, times), moving)
    n_img, n_txt = _noise(layout, IMAGE, noise_key, t), _noise(layout, TEXT, noise_key, t)
    # [joint; text given noise image at T; image given noise text at T]
    out = network({IMAGE: _cat(x_parts[IMAGE], n_img, x_parts[IMAGE]), TEXT: _cat(x_parts[TEXT], x_parts[TEXT], n_txt)},
                  {IMAGE: _cat(t, top, t), TEXT: _cat(t, t, top)})
    img_c, _, img_u = _split(out[IMAGE], 3)
    txt_c, txt_u, _ = _split(out[TEXT], 3)
    return layout.pack({IMAGE: _mix(scale, img_c, img_u), TEXT: _mix(scale, txt_c, txt_u)}, moving)
