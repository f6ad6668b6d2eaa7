"""`infer/sample.py --pretrained FOLDER` on a diffusers DiT pipeline folder (model_index.json).

Samples `--per-class` images for each class of `--class`/`--classes` with unigen's DiTPipeline
(unigen/pipelines/dit.py) and writes
  FILE.npz          `images` (N, H, W, C) float32 in [-1, 1] (the same range as every other
                    sample.py output: the pipeline's [0, 1] images x 2 - 1) and `labels` (N,);
  FILE.png          a grid, one row per class, each row labelled with its id (and id2label name);
  FILE_images/      one PNG per sample, `<index>_class<id>.png`.
"""

from __future__ import annotations

import os

import numpy as np

from unigen.errors import ConfigError

def sample_pipeline(args, per_class: int, classes: list[int] | None) -> int:
    """`args`: infer/sample.py's common options; `per_class` and `classes` its grid flags (the only
    request flags a pipeline folder takes)."""
    from unigen.images import save_grid, to_uint8
    from unigen.pipelines import DiTPipeline

    if args.guided_channels is not None:
        raise ConfigError("--guided-channels: not an option of a DiT pipeline folder (its guidance is diffusers' "
                          "DiTPipeline's); give --class, --per-class, --steps, --cfg-scale, --sampler, --vae, --seed")
    if not classes:
        raise ConfigError("a DiT pipeline samples the classes it is given: --class 207 --class 360 "
                          "(or --classes 207,360)")
    if args.sampler is not None and args.sampler not in ("ddim", "dpm_solver_2m"):
        raise ConfigError(f"--sampler {args.sampler!r}: a DiT pipeline reads its scheduler config as 'ddim' "
                          f"(DDIMScheduler) or 'dpm_solver_2m' (DPMSolverMultistepScheduler)")
    from unigen.cli_args import check_output_folder
    check_output_folder(args.out[:-4] + "_images", "--out (its _images/ folder)")  # before the pipeline is read
    pipe = DiTPipeline.from_pretrained(args.pretrained, vae=args.vae, scheduler=args.sampler)
    steps = 50 if args.steps is None else args.steps  # DiTPipeline.__call__'s defaults
    scale = 4.0 if args.cfg_scale is None else args.cfg_scale
    labels = np.repeat(np.asarray(classes, np.int64), per_class)
    images = pipe(labels, num_inference_steps=steps, guidance_scale=scale, seed=args.seed,
                  batch_size=args.batch_size) * 2.0 - 1.0
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, images=images.astype(np.float32), labels=labels.astype(np.int32))
    png = args.out[:-4] + ".png"
    names = [f"{c} {pipe.id2label[c].split(',')[0]}" if c in pipe.id2label else str(c) for c in classes]
    save_grid(png, images, rows=len(classes), labels=names)
    folder = args.out[:-4] + "_images"
    os.makedirs(folder, exist_ok=True)
    from PIL import Image
    for i, (img, c) in enumerate(zip(to_uint8(images), labels)):
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(os.path.join(folder, f"{i:04d}_class{c}.png"))
    print(f"wrote {args.out} ({len(images)} samples, {pipe.scheduler.class_name} {steps} steps, guidance {scale}), "
          f"{png} and {folder}/")
    return 0
