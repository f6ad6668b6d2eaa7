"""One sampler object for the five UniDiffuser modes, with the Generator's call shape.

    sampler = ModeSampler(graphdef, process, layout, network_of, sampler="dpm_solver_2m", steps=20,
                          cfg_scale=3.0)
    out = sampler(states, {"text": text_latents}, rng, mode="t2i")   # {"img": ..., "clip_img": ...}
    out = sampler(states, {"img": x, "clip_img": c}, rng, mode="i2t")  # {"text": ...}
    out = sampler(states, {}, rng, num=100, mode="joint")            # every part

Each mode is a `unigen.sampling.Generator` over the packed moving modalities (its samples depend
on (rng, sample index) only, it shards over a mesh like any other), whose network call is the
mode's wrapper (`unigen.unidiffuser.modes.mode_eps`) and whose `prepare` gives each sample the key
of its replacement noise. `network_of(module) -> network(parts, times) -> eps` adapts the
module's own signature (e.g. the U-ViT's positional modalities). Called without `mode`, the
sampler runs `default_mode` and returns the images alone, so the trainer's sample grids work
unchanged. Image parts named in `clip_parts` are clipped to [-1, 1] (pixels).
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from unigen.sampling import Generator
from unigen.unidiffuser.modes import GIVEN, GUIDED, MOVES, Layout, check_mode, mode_eps
from unigen.unidiffuser.objective import condition_times

NOISE_STREAM = 0x0DD1  # folded into each sample's key for its replacement noise


def _add_noise_key(model, cond, keys):
    return dict(cond, noise_key=jax.vmap(lambda k: jax.random.fold_in(k, NOISE_STREAM))(keys))


def _apply(module, x, t, *, noise_key, network_of, mode, layout, scale, times, **given):
    parts = {}
    if mode in GIVEN:
        name = GIVEN[mode]
        parts[name] = tuple(given[p] for p in layout.part_names(name))
    return mode_eps(network_of(module), mode, layout, x, t, given=parts, noise_key=noise_key, scale=scale,
                    clean_time=times[0], noise_time=times[1])


class ModeSampler:
    def __init__(self, graphdef, process, layout: Layout, network_of, *, sampler: str = "dpm_solver_2m",
                 steps: int = 20, cfg_scale: float = 1.0, cfg_scales: dict | None = None, sampler_options=None,
                 default_mode: str = "t2i", image_part: str = "img", clip_parts=("img",), mesh=None, rules="dp"):
        self.graphdef, self.process, self.layout, self.network_of = graphdef, process, layout, network_of
        self.sampler, self.steps = sampler, int(steps)
        self.default_mode, self.image_part, self.clip_parts = check_mode(default_mode), image_part, tuple(clip_parts)
        self.scales = {m: float(cfg_scale) for m in GUIDED}
        for mode, scale in (cfg_scales or {}).items():
            if check_mode(mode) not in GUIDED:
                raise ValueError(f"cfg_scales[{mode!r}]: only {GUIDED} are guided")
            self.scales[mode] = float(scale)
        self.mesh, self.rules = mesh, rules
        self._generators = {}
        self.states = None
        # Checks the sampler, its steps and options once; each mode's generator reuses the typed options.
        self.sampler_options = Generator(graphdef, process, sample_shape=(1,), sampler=sampler, steps=steps,
                                         sampler_options=sampler_options).sampler_options

    def generator(self, mode: str) -> Generator:
        """The Generator of one mode (built once)."""
        if check_mode(mode) not in self._generators:
            apply = functools.partial(_apply, network_of=self.network_of, mode=mode, layout=self.layout,
                                      scale=self.scales.get(mode, 1.0), times=condition_times(self.process))
            self._generators[mode] = Generator(
                self.graphdef, self.process, sample_shape=(self.layout.size(MOVES[mode]),), sampler=self.sampler,
                steps=self.steps, sampler_options=self.sampler_options, clip=False, mesh=self.mesh, rules=self.rules,
                prepare=_add_noise_key, apply=apply)
        return self._generators[mode]

    def conditions_needed(self, mode: str) -> tuple[str, ...]:
        """The part names a mode's `cond` must hold (the clean condition's parts)."""
        return self.layout.part_names(GIVEN[mode]) if mode in GIVEN else ()

    def __call__(self, states=None, cond: dict | None = None, rng=None, *, num: int | None = None,
                 batch_size: int = 500, progress=False, mode: str | None = None):
        """The moving modalities' parts, part name -> numpy (N, ...); without `mode`, the images of
        `default_mode` (N, H, W, C)."""
        chosen = self.default_mode if mode is None else check_mode(mode)
        cond = dict(cond or {})
        need = self.conditions_needed(chosen)
        missing, extra = [p for p in need if p not in cond], sorted(set(cond) - set(need))
        if missing or extra:
            what = f"{GIVEN[chosen]} ({list(need)})" if need else "no condition"
            raise ValueError(f"mode {chosen!r} takes {what} as cond; got {sorted(cond)}"
                             + (f" (missing {missing})" if missing else "")
                             + (" (marginal and joint modes take none)" if extra and not need else ""))
        for p in need:
            shape = dict(self.layout.parts(GIVEN[chosen]))[p]
            if tuple(np.shape(cond[p])[1:]) != tuple(shape):
                raise ValueError(f"mode {chosen!r}: condition {p!r} has shape {np.shape(cond[p])}; expected (N, "
                                 f"{', '.join(map(str, shape))})")
        states = self.states if states is None else states
        x = self.generator(chosen)(states, cond, rng, num=num, batch_size=batch_size, progress=progress)
        parts = {}
        for name, values in self.layout.unpack(x, MOVES[chosen]).items():
            for part, value in zip(self.layout.part_names(name), values):
                value = np.asarray(value)
                parts[part] = np.clip(value, -1.0, 1.0) if part in self.clip_parts else value
        return parts[self.image_part] if mode is None else parts
