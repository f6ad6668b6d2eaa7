"""`python infer/sample.py --workdir DIR --per-class K --seed S --out FILE.npz`

Samples a class-conditional model from a training work dir (its EMA weights, and by
default the sampler settings of its config) or from any `unigen.from_pretrained` path
(`--pretrained`; DiT checkpoints use the DiT Gaussian diffusion). Writes FILE.npz with
`images` (N, H, W, C) in [-1, 1] and `labels` (N,), and FILE.png, a grid with one row per
class.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def protocol_samples(generator, *, num_samples: int, seeds, batch_size: int = 1000, params=None):
    """The evaluation protocol's samples (unigen.eval): for each seed, `num_samples` labels
    following the test split's mix, sampled from PRNGKey(10_000 + seed). Returns
    (images, labels, seed per sample)."""
    import jax

    from unigen.eval import eval_labels

    images, labels, seed_of = [], [], []
    for seed in seeds:
        y = eval_labels(num_samples, seed)
        images.append(generator(y, jax.random.PRNGKey(10_000 + seed), batch_size=batch_size, params=params,
                                progress=True))
        labels.append(y)
        seed_of.append(np.full(len(y), seed))
    return np.concatenate(images), np.concatenate(labels), np.concatenate(seed_of)


def _parse(argv):
    p = argparse.ArgumentParser(prog="infer/sample.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="a unigen training work dir")
    src.add_argument("--pretrained", help="any path unigen.from_pretrained reads")
    p.add_argument("--out", required=True, help="output .npz (a .png grid is written beside it)")
    p.add_argument("--per-class", type=int, default=8, help="samples per class")
    p.add_argument("--classes", default=None, help="comma-separated class ids (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default=None, help="ddpm | ddim | dpm_solver_2m | euler | heun")
    p.add_argument("--steps", type=int, default=None, help="sampling steps")
    p.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--guided-channels", default=None,
                   help="guide only the first N output channels ('dit' = 3, the official DiT behaviour)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--protocol", action="store_true",
                   help="the evaluation protocol instead of --per-class: 5000 samples per seed 0, 1, 2 with "
                        "the test split's label mix (a `seed` array goes into the npz)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    import jax

    from unigen.diffusion import GaussianDiffusion
    from unigen.images import save_grid
    from unigen.sampling import Generator

    if not args.out.endswith(".npz"):
        print("error: --out must end with .npz", file=sys.stderr)
        return 2
    if args.per_class < 1:
        print("error: --per-class must be >= 1", file=sys.stderr)
        return 2
    settings = dict(sampler="ddpm", steps=250, cfg_scale=1.5, guided_channels="dit")
    if args.workdir:
        from unigen.training.build import diffusion_process
        from unigen.training.checkpoint import CheckpointError, is_workdir, load_model_for_inference, read_config
        if not is_workdir(args.workdir):
            print(f"error: {args.workdir} is not a unigen training work dir (no config.json + checkpoints/)",
                  file=sys.stderr)
            return 2
        cfg = read_config(args.workdir)
        try:
            model = load_model_for_inference(args.workdir)
        except CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        process = diffusion_process(cfg, model.cfg.learn_sigma)
        settings = dict(sampler=cfg.sample.sampler, steps=cfg.sample.steps, cfg_scale=cfg.sample.cfg_scale,
                        guided_channels=cfg.sample.guided_channels,
                        clip_denoised=cfg.sample.get("clip_denoised", False))
    else:
        import unigen
        model = unigen.from_pretrained(args.pretrained)
        process = GaussianDiffusion.create(1000, "linear", learn_sigma=model.cfg.learn_sigma)
    for key in ("sampler", "steps", "cfg_scale", "guided_channels"):
        value = getattr(args, key)
        if value is not None:
            settings[key] = int(value) if key == "guided_channels" and value != "dit" else value
    num_classes = model.cfg.num_classes
    classes = list(range(num_classes)) if args.classes is None else [int(c) for c in args.classes.split(",")]
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        print(f"error: --classes {bad} outside 0..{num_classes - 1}", file=sys.stderr)
        return 2
    gen = Generator(model, process, **settings)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    png = args.out[:-4] + ".png"
    if args.protocol:
        from unigen.eval import N_SAMPLES, SEEDS
        images, labels, seeds = protocol_samples(gen, num_samples=N_SAMPLES, seeds=SEEDS, batch_size=args.batch_size)
        np.savez_compressed(args.out, images=images.astype(np.float32), labels=labels, seed=seeds)
        order = np.concatenate([np.flatnonzero(labels == c)[:args.per_class] for c in classes])
        save_grid(png, images[order], rows=len(classes))
    else:
        labels = np.repeat(np.asarray(classes, np.int32), args.per_class)
        images = gen(labels, jax.random.PRNGKey(args.seed), batch_size=args.batch_size, progress=True)
        np.savez_compressed(args.out, images=images.astype(np.float32), labels=labels)
        save_grid(png, images, rows=len(classes))
    print(f"wrote {args.out} ({len(labels)} samples, {settings}) and {png}")
    return 0


def console_main() -> int:
    """The installed command (see unigen/cpu_malloc.py)."""
    from unigen.cpu_malloc import console_entry

    return console_entry(main)


if __name__ == "__main__":
    raise SystemExit(console_main())
