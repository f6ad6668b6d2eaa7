"""Seconds to build full-size models abstractly (`nnx.eval_shape`, as the parameter-count tests and
training's config checks do) and filled (`unigen_format.build_filled`, as every `from_pretrained` does).

    python bench/build_time.py                    # DiT-XL/2, DINOv2-giant, SD3.5-large (unscanned)
    python bench/build_time.py --reference        # also each build with flax's own RngStream.__call__
    python bench/build_time.py --models dit-xl --filled dit-xl   # + a filled build (allocates 2.7 GB)
    python bench/build_time.py --models dit-s --depths 7,14,28   # growth with depth (DiT-XL/2 widths)

Why: flax's `RngStream.__call__` steps its counter in place, and `Variable.set_value` then probes
`.sharding` of the traced old and new count; JAX builds that AttributeError's message by walking every
equation traced so far, once per parameter, so abstract builds grew with the square of the parameter
count. `unigen.nn.layers.next_key` draws the same key with the same counter step without the probe.
`--reference` times the flax path in the same run (patched in for the build), so before/after is one
run; on code older than `next_key` the script times that code as it is. Before timing it checks that
both paths give bit-identical parameters (eager DiT-S/2, scanned and not, and a small MM-DiT).

Run from any folder but the repository root (transformers imports a `kernels` package; the root's
`kernels/` folder would shadow it): `cd /tmp && python /work/main/bench/build_time.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import time

import flax
import jax
import numpy as np
from flax import nnx

from unigen.convert import mmdit as mmdit_convert
from unigen.convert.dinov2 import dinov2_config
from unigen.convert.unigen_format import build_filled
from unigen.models.dit import DiT, dit_config
from unigen.models.mmdit import MMDiT
from unigen.nn import layers
from unigen.tokenizers.dinov2 import Dinov2

RELEASED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "released_configs")


def _released(rel: str) -> dict:
    with open(os.path.join(RELEASED, rel)) as f:
        data = json.load(f)
    return data.get("config", data)


def models() -> dict:
    """name -> (class, config): the released sizes, each unscanned (a Python list of blocks)."""
    sd35 = mmdit_convert.diffusers_config(_released("stabilityai_stable-diffusion-3.5-large.transformer.json"))
    dino = _released("encoders/dinov2_giant.json")
    dino = dinov2_config({k: v for k, v in dino.items() if not k.startswith("_")})
    return {
        "dit-s": (DiT, dit_config("DiT-S/2", scan_layers=False)),
        "dit-xl": (DiT, dit_config("DiT-XL/2", scan_layers=False)),
        "dinov2-giant": (Dinov2, dino),
        "sd35-large": (MMDiT, dataclasses.replace(sd35, scan_layers=False)),
    }


@contextlib.contextmanager
def flax_draw():
    """Parameters drawn by flax's own `RngStream.__call__` (the code before `next_key`)."""
    saved = layers.next_key
    layers.next_key = lambda stream: stream()
    try:
        yield
    finally:
        layers.next_key = saved


def abstract(cls, cfg):
    return nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))


def n_params(model) -> int:
    return sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))


def check_same_parameters(table) -> None:
    """Both draws give bit-identical parameters (and the same final counter) for the same seed."""
    cases = [("dit-s", table["dit-s"]), ("dit-s scanned", (DiT, dataclasses.replace(table["dit-s"][1],
                                                                                     scan_layers=True))),
             ("mmdit small, dual attention", (MMDiT, dataclasses.replace(
                 table["sd35-large"][1], num_layers=3, num_attention_heads=2, attention_head_dim=8,
                 caption_projection_dim=16, joint_attention_dim=12, pooled_projection_dim=10, sample_size=8,
                 pos_embed_max_size=12, dual_attention_layers=(0, 1)))),
             ("dinov2 small", (Dinov2, dataclasses.replace(table["dinov2-giant"][1], num_layers=2, hidden_size=32,
                                                            num_heads=2)))]
    for name, (cls, cfg) in cases:
        rngs_a, rngs_b = nnx.Rngs(3), nnx.Rngs(3)
        ours = nnx.state(cls(cfg, rngs=rngs_a))
        with flax_draw():
            theirs = nnx.state(cls(cfg, rngs=rngs_b))
        a, b = nnx.to_flat_state(ours), nnx.to_flat_state(theirs)
        assert [p for p, _ in a] == [p for p, _ in b], name
        for (path, x), (_, y) in zip(a, b):
            assert np.array_equal(np.asarray(x[...]), np.asarray(y[...])), (name, path)
        assert int(rngs_a.default.count[...]) == int(rngs_b.default.count[...]), name
        print(f"same parameters both ways: {name} ({len(a)} variables, {n_params(cls(cfg, rngs=nnx.Rngs(3))):,} "
              f"parameters)")


def zeros_like_params(model) -> dict:
    """Flat weights as `from_pretrained` hands them to build_filled (zero-stride: no memory until filled)."""
    from unigen.models.registry import kind_of
    stacked = kind_of(model).stacked(model.cfg)
    assert not stacked, "filled builds are timed unscanned"
    return {".".join(str(p) for p in path): np.broadcast_to(np.zeros((), v.dtype), v.shape)
            for path, v in nnx.to_flat_state(nnx.state(model))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="dit-xl,dinov2-giant,sd35-large")
    ap.add_argument("--filled", default="", help="models also built filled (allocates 4 bytes per parameter)")
    ap.add_argument("--reference", action="store_true", help="also time flax's RngStream.__call__ path")
    ap.add_argument("--rounds", type=int, default=2, help="builds per draw (the fastest is printed)")
    ap.add_argument("--depths", default="", help="for dit-s/dit-xl: time these depths at DiT-XL/2 widths")
    args = ap.parse_args()
    have_next_key = hasattr(layers, "next_key")
    print(f"jax {jax.__version__}, flax {flax.__version__}, "
          f"{os.cpu_count()} CPUs, next_key {'present' if have_next_key else 'absent (old code)'}")
    table = models()
    if have_next_key:
        check_same_parameters(table)
    draws = [("unigen", contextlib.nullcontext)] if have_next_key else [("as is", contextlib.nullcontext)]
    if args.reference and have_next_key:
        draws.append(("flax", flax_draw))
    runs = []
    depths = [int(d) for d in args.depths.split(",") if d]
    if depths and not set(args.models.split(",")) <= {"dit-s", "dit-xl"}:
        ap.error("--depths varies a DiT: use it with --models dit-xl")
    for name in args.models.split(","):
        cls, cfg = table[name]
        for depth in depths or [None]:
            c = cfg if depth is None else dataclasses.replace(dit_config("DiT-XL/2", scan_layers=False), depth=depth)
            runs.append((name if depth is None else f"DiT-XL/2 depth {depth}", cls, c))
    for label, cls, cfg in runs:
        best, n = measure(lambda: abstract(cls, cfg), draws, args.rounds)
        print(f"{label:24s} abstract build: {fmt(best)}   {n:>13,} parameters")
    for name in [m for m in args.filled.split(",") if m]:
        cls, cfg = table[name]
        flat = zeros_like_params(abstract(cls, cfg))
        best, _ = measure(lambda: build_filled(cls, cfg, flat, source="zeros"), draws, args.rounds)
        print(f"{name:24s} filled build:   {fmt(best)}")


def measure(build, draws, rounds: int) -> tuple[dict, int]:
    """Fastest of `rounds` builds per draw (the draws alternating AB, BA, ... so neither always goes
    first) and the model's parameter count."""
    best, n = {}, 0
    for r in range(rounds):
        for draw, ctx in (draws if r % 2 == 0 else draws[::-1]):
            with ctx():
                t0 = time.perf_counter()
                model = build()
                jax.block_until_ready(nnx.state(model))
                secs = time.perf_counter() - t0
            n = n_params(model)
            del model
            best[draw] = min(best.get(draw, secs), secs)
    return best, n


def fmt(best: dict) -> str:
    text = "   ".join(f"{secs:7.2f} s ({draw})" for draw, secs in best.items())
    if "flax" in best:
        text += f"   flax / unigen {best['flax'] / best['unigen']:5.1f}x"
    return text

if __name__ == "__main__":
    main()
