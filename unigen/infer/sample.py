"""`python infer/sample.py --workdir DIR --per-class K --seed S --out FILE.npz`

Samples a model from a training work dir (its EMA weights, its task and by default the
sampler settings of its config; any model kind and task, including ones registered from
outside unigen through `config.imports`) or a DiT from any `unigen.from_pretrained` path
(`--pretrained`, sampled with the DiT Gaussian diffusion). Writes FILE.npz with `images`
(N, H, W, C) in [-1, 1] and `labels` (N,) for class-conditional models, and FILE.png, a grid
with one row per class. Classes: `--class 207 --class 360` (repeatable) and/or `--classes 207,360`.

A diffusers DiT pipeline folder (`model_index.json`, transformer/, vae/, scheduler/, as
facebook/DiT-XL-2-256) given to `--pretrained` samples like diffusers' DiTPipeline
(unigen/pipelines/dit.py: its scheduler_config.json's DDIM or DPM-Solver++, guidance
`--cfg-scale` (default 4.0), `--steps` (default 50), `--sampler ddim|dpm_solver_2m` to read the
scheduler config as the other class) and decodes through its VAE (`--vae PATH` overrides or
supplies one): `images` are the decoded pixels in [-1, 1] (the pipeline's [0, 1] output x 2 - 1),
with `labels`; FILE.png labels each row with its class id (and id2label name), and
FILE_images/ holds one PNG per sample.

Text-to-image work dirs take prompts: `--prompt "a handwritten 7" --prompt "..." --per-prompt K`
writes `images` and `prompts` (N,) with a grid row per prompt; `--protocol` prompts with the
held-out caption templates and writes `labels` (the digit each prompt names) and `prompts`.

UniDiffuser work dirs sample any of their modes: `--mode t2i --prompt ...`; `--mode i2t --image
IMG [--image ...]` (an image file, or `test:0-9` / `test:3,5` for test-split images) writes the
nearest `captions`, the `digits` they name and the raw `text` latents; `--mode joint --num N`
writes images and captions; `--mode image` / `--mode text` the marginals.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def _parse(argv):
    from unigen.cli_args import SEED_LIMIT, Parser, class_list, finite_float, guided_channels, int_at_least

    positive, seed = int_at_least(1), int_at_least(0, below=SEED_LIMIT)
    p = Parser(prog="infer/sample.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="a unigen training work dir")
    src.add_argument("--pretrained", help="any path unigen.from_pretrained reads (a DiT), or a diffusers DiT "
                                          "pipeline folder (model_index.json); a hub id org/name too")
    p.add_argument("--revision", default=None, help="with a hub id: a branch, tag or commit hash (default main)")
    p.add_argument("--out", required=True, help="output .npz (a .png grid is written beside it)")
    p.add_argument("--per-class", type=positive, default=8, help="samples per class (per grid row)")
    p.add_argument("--prompt", action="append", default=None,
                   help="a text prompt (repeat for several; text-to-image work dirs); one grid row each")
    p.add_argument("--per-prompt", type=positive, default=8, help="samples per prompt (per grid row)")
    p.add_argument("--mode", default=None, choices=("joint", "t2i", "i2t", "image", "text"),
                   help="a UniDiffuser work dir's sampling mode: t2i needs --prompt, i2t needs --image")
    p.add_argument("--image", action="append", default=None,
                   help="an image to caption (--mode i2t): a file, or test:0-9 / test:3,5 (test-split indices)")
    p.add_argument("--num", type=positive, default=16, help="samples of --mode joint / image / text")
    p.add_argument("--classes", type=class_list, default=None, help="comma-separated class ids (default: all)")
    p.add_argument("--class", dest="class_ids", action="append", type=int_at_least(0), default=None,
                   help="a class id (repeatable; joins --classes); one grid row each")
    p.add_argument("--vae", default=None, help="a pipeline folder's VAE: replaces or supplies its vae/ "
                                               "(any AutoencoderKL path unigen.from_pretrained reads)")
    p.add_argument("--seed", type=seed, default=0, help="the sampling noise's seed")
    p.add_argument("--sampler", default=None, help="ddpm | ddim | dpm_solver_2m | euler | heun")
    p.add_argument("--steps", type=positive, default=None, help="sampling steps")
    p.add_argument("--cfg-scale", type=finite_float(0.0), default=None,
                   help="classifier-free guidance scale (1 = off)")
    p.add_argument("--guided-channels", type=guided_channels, default=None,
                   help="guide only the first N output channels ('dit' = 3, the official DiT behaviour)")
    p.add_argument("--batch-size", type=positive, default=None,
                   help="samples per compiled batch (default: the config's eval.batch_size, else 500); "
                        "samples do not depend on it")
    p.add_argument("--protocol", action="store_true",
                   help="the evaluation protocol instead of --per-class: the run's eval.num_samples per seed "
                        "(5000 per seed 0, 1, 2 by default) with the test split's label mix (a `seed` array "
                        "goes into the npz); reproduces the trainer's eval.json")
    return p.parse_args(argv)


def _pretrained_task(model):
    """The DiT Gaussian diffusion task for a DiT read by from_pretrained (no run config)."""
    import ml_collections

    from unigen.errors import ConfigError
    from unigen.models import kind_of
    from unigen.tasks import DiffusionTask

    kind, c = kind_of(model), model.cfg
    if kind.name != "dit":
        raise ConfigError(f"--pretrained samples DiTs; this is a {kind.name!r}: sample its training --workdir")
    cfg = ml_collections.ConfigDict(dict(
        data=dict(name="pretrained", image_size=c.input_size, channels=c.in_channels, num_classes=c.num_classes),
        diffusion=dict(kind="gaussian", num_timesteps=1000, beta_schedule="linear", loss=None),
        sample=dict(sampler="ddpm", steps=250, cfg_scale=1.5, guided_channels="dit", eta=0.0, clip_denoised=False)))
    return cfg, DiffusionTask(cfg, kind, c)


def main(argv=None) -> int:
    args = _parse(argv)
    from unigen.training.cli import quiet_third_party_logs
    quiet_third_party_logs()
    from unigen.errors import UnigenError
    try:
        return _sample(args)
    except UnigenError as e:  # expected failures: one line; anything else keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


def _sample(args) -> int:
    import jax
    from flax import nnx

    from unigen.errors import ConfigError
    from unigen.images import save_grid
    from unigen.cli_args import check_output_file

    if not args.out.endswith(".npz"):
        raise ConfigError(f"--out {args.out!r} must end with .npz")
    # Where the samples go is checked before any model is read: a bad --out never costs a sampling run.
    check_output_file(args.out, "--out")
    check_output_file(args.out[:-4] + ".png", "--out (its .png grid)")
    if args.prompt is not None and args.protocol:
        raise ConfigError("--prompt and --protocol exclude each other (the protocol has its own prompts)")
    if args.image is not None and args.mode != "i2t":
        raise ConfigError("--image is the condition of --mode i2t")
    classes = _class_ids(args)
    if args.pretrained:
        from unigen.hub import resolve
        from unigen.pipelines import is_pipeline_folder
        args.pretrained = resolve(args.pretrained, revision=args.revision)  # a hub id -> its cached snapshot
        if is_pipeline_folder(args.pretrained):
            from unigen.infer.sample_pipeline import sample_pipeline
            return sample_pipeline(args, classes)
    if args.revision is not None and not args.pretrained:
        raise ConfigError("--revision selects a version of a --pretrained hub id")
    if args.vae is not None:
        raise ConfigError("--vae is for a diffusers pipeline folder (--pretrained FOLDER with model_index.json)")
    if args.workdir:
        from unigen.training.build import build, import_plugins
        from unigen.training.checkpoint import is_workdir, load_model_for_inference, read_config
        if not is_workdir(args.workdir):
            raise ConfigError(f"--workdir {args.workdir} is not a unigen training work dir (no config.json + "
                              f"checkpoints/)")
        cfg = read_config(args.workdir)
        import_plugins(cfg)
        task = build(cfg).task
        model = load_model_for_inference(args.workdir)
    else:
        from unigen.pretrained import from_pretrained
        model = from_pretrained(args.pretrained)
        cfg, task = _pretrained_task(model)
    settings = {k: getattr(args, k) for k in ("sampler", "steps", "cfg_scale") if getattr(args, k) is not None}
    if args.guided_channels is not None:
        settings["guided_channels"] = args.guided_channels
    graphdef, state = nnx.split(model)
    try:
        gen = task.generator(cfg.sample, graphdef, **settings)
    except ValueError as e:  # a sampler that does not fit the objective, guidance without a null condition
        raise ConfigError(f"--sampler/--steps/--cfg-scale: {e}") from None
    num_classes = cfg.data.num_classes
    if classes is not None and [c for c in classes if not 0 <= c < num_classes]:
        raise ConfigError(f"--classes {classes} outside 0..{num_classes - 1}")

    batch_size = args.batch_size or (cfg.eval.batch_size if "eval" in cfg else 500)

    def generate(cond, num, seed, label=None, **options):  # images: a latent model's samples decoded to pixels
        samples = gen((state,), cond, jax.random.PRNGKey(seed), num=num, batch_size=batch_size, progress=label,
                      **options)
        return task.decode_samples(samples)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    png = args.out[:-4] + ".png"
    labelled = getattr(task, "labelled", False)
    if args.mode is not None:
        return _sample_mode(args, task, generate, png, f"{gen.sampler} {gen.steps} steps")
    if args.prompt is not None:
        if not hasattr(task, "conditions_for_prompts"):
            raise ConfigError(f"--prompt: task {task.name!r} takes no text prompts (use --per-class/--classes)")
        prompts = np.repeat(np.asarray(args.prompt, dtype=str), args.per_prompt)
        try:
            cond = task.conditions_for_prompts(list(prompts))
        except ValueError as e:
            raise ConfigError(f"--prompt: {e}") from None
        images = generate(cond, len(prompts), args.seed, label="sample")
        np.savez_compressed(args.out, images=images.astype(np.float32), prompts=prompts)
        save_grid(png, images, rows=len(args.prompt), labels=args.prompt)
    elif args.protocol:
        if not hasattr(task, "protocol_samples"):
            raise ConfigError(f"--protocol: task {task.name!r} has no evaluation protocol")
        from unigen.eval import N_SAMPLES, SEEDS
        # A work dir's own protocol (its config's eval section), so the trainer's eval.json
        # is reproduced exactly; the standard 3 x 5000 otherwise.
        num, seeds = (cfg.eval.num_samples, range(cfg.eval.seeds)) if "eval" in cfg else (N_SAMPLES, SEEDS)
        images, labels, seeds = task.protocol_samples(generate, num_samples=num, seeds=seeds)
        extra = dict(labels=labels) if labelled else {}
        if hasattr(task, "protocol_annotations"):  # e.g. the prompt each sample was given
            extra.update(task.protocol_annotations(labels, seeds))
        np.savez_compressed(args.out, images=images.astype(np.float32), seed=seeds, **extra)
        rows = list(range(num_classes)) if classes is None else classes
        order = np.concatenate([np.flatnonzero(labels == c)[:args.per_class] for c in rows])
        save_grid(png, images[order], rows=len(rows), labels=rows)
    else:
        shown = classes if classes is not None else list(range(num_classes))
        cond, num, rows = task.grid(args.per_class, classes=shown if labelled else None)
        images = generate(cond, num, args.seed, label="sample")
        arrays = dict(images=images.astype(np.float32))
        if labelled:
            arrays["labels"] = np.repeat(np.asarray(shown, np.int32), args.per_class)
        np.savez_compressed(args.out, **arrays)
        save_grid(png, images, rows=rows, labels=task.grid_labels(args.per_class, classes=shown if labelled else None))
    print(f"wrote {args.out} ({len(images)} samples, {gen.sampler} {gen.steps} steps) and {png}")
    return 0


def _class_ids(args) -> list[int] | None:
    """--classes (comma list) then every --class, in order; None when neither is given."""
    classes = None if args.classes is None else list(args.classes)  # parsed by unigen/cli_args.py's class_list
    if args.class_ids:
        classes = (classes or []) + list(args.class_ids)
    return classes


def _test_indices(spec: str, size: int) -> list[int]:
    """'0-9' / '3,5,7' / '4' -> indices into a split of `size` images."""
    from unigen.errors import ConfigError
    out = []
    try:
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    except ValueError:
        raise ConfigError(f"--image test:{spec}: give indices such as test:0-9 or test:3,5") from None
    bad = [i for i in out if not 0 <= i < size]
    if bad or not out:
        raise ConfigError(f"--image test:{spec}: indices {bad or out} outside the test split's 0..{size - 1}")
    return out


def _read_images(specs, task) -> np.ndarray:
    """The --image arguments as (N, H, W, C) in [-1, 1] at the data set's size and channels."""
    from unigen.errors import ConfigError
    d = task.cfg.data
    out = []
    for spec in specs:
        if spec.startswith("test:"):
            images, _ = task.images("test")
            out.extend(images[_test_indices(spec[5:], len(images))])
            continue
        if not os.path.isfile(spec):
            raise ConfigError(f"--image {spec!r}: no such file (give an image file or test:INDICES)")
        from PIL import Image
        try:
            img = Image.open(spec).convert("L" if d.channels == 1 else "RGB").resize((d.image_size, d.image_size),
                                                                                    Image.BICUBIC)
        except OSError as e:
            raise ConfigError(f"--image {spec!r}: not an image PIL can read ({e})") from None
        arr = np.asarray(img, np.float32).reshape(d.image_size, d.image_size, d.channels)
        out.append(arr / 127.5 - 1.0)
    return np.stack(out).astype(np.float32)


def _sample_mode(args, task, generate, png, how) -> int:
    """--mode: one of a UniDiffuser work dir's five sampling modes."""
    from unigen.errors import ConfigError
    from unigen.images import save_grid
    if not hasattr(task, "read_captions"):
        raise ConfigError(f"--mode: task {task.name!r} has one sampling mode; --mode is for UniDiffuser work dirs")
    mode = args.mode
    if mode == "t2i" and args.prompt is None:
        raise ConfigError("--mode t2i needs a prompt: --prompt \"a handwritten 7\" (repeatable)")
    if mode != "t2i" and args.prompt is not None:
        raise ConfigError(f"--prompt is the condition of --mode t2i, not of --mode {mode}")
    if mode == "i2t" and not args.image:
        raise ConfigError("--mode i2t needs images: --image FILE or --image test:0-9 (repeatable)")
    arrays = {}
    try:
        if mode == "t2i":
            prompts = np.repeat(np.asarray(args.prompt, dtype=str), args.per_prompt)
            cond, num, rows = task.conditions_for_prompts(list(prompts)), len(prompts), len(args.prompt)
            arrays["prompts"] = prompts
        elif mode == "i2t":
            images = _read_images(args.image, task)
            cond, num, rows = task.conditions_for_images(images), len(images), None
            arrays["given_images"] = images
        else:
            cond, num, rows = {}, args.num, None
    except ValueError as e:
        raise ConfigError(f"--mode {mode}: {e}") from None
    out = generate(cond, num, args.seed, label=mode, mode=mode)
    if "img" in out:
        arrays["images"] = out["img"].astype(np.float32)
        save_grid(png, out["img"], rows=rows or max(1, int(np.sqrt(num))), labels=args.prompt if rows else None)
    if "text" in out:
        captions, digits, _ = task.read_captions(out["text"])
        arrays.update(text=out["text"].astype(np.float32), captions=captions, digits=digits)
        for i, caption in enumerate(captions[:32]):
            print(f"{i:3d}: {caption}")
    np.savez_compressed(args.out, **arrays)
    wrote = f"wrote {args.out} ({num} samples, {mode}, {how})"
    print(wrote + (f" and {png}" if "img" in out else ""))
    return 0


def console_main() -> int:
    """The installed command (see unigen/cpu_malloc.py)."""
    from unigen.cpu_malloc import console_entry

    return console_entry(main)


if __name__ == "__main__":
    raise SystemExit(console_main())
