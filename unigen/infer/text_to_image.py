"""Text to images with a released pipeline folder or hub id (any `unigen.pipelines.from_pretrained`
reads; the families are listed in docs/library.md).

    python infer/text_to_image.py --pipeline ORG/NAME --prompt "a red bicycle" \\
        --prompt "a lighthouse at dusk" --num 2 --steps 4 --size 768x1024 --seed 0 --out out/t2i

writes one PNG per image (`<prompt index>_<image index>_<prompt start>.png`) and `grid.png` (one row
per prompt, labelled with it) into `--out`, and prints what it wrote. Flags left out take the
pipeline's own defaults (diffusers' call defaults: steps, guidance, size, max_sequence_length).
Installed as `unigen-text-to-image`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys


def _size(text: str) -> tuple[int, int]:
    """'HxW' (or one number for a square) -> (height, width)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX*]\s*(\d+))?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: give HEIGHTxWIDTH (e.g. 768x1024) or one side (1024)")
    h = int(match.group(1))
    return h, int(match.group(2) or h)


def _parser():
    from unigen.cli_args import SEED_LIMIT, Parser, finite_float, int_at_least

    p = Parser(prog="infer/text_to_image.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", required=True, help="a diffusers pipeline folder (model_index.json) or hub id")
    p.add_argument("--revision", default=None, help="with a hub id: a branch, tag or commit hash")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several; one grid row each)")
    p.add_argument("--negative-prompt", default=None, help="what to steer away from (pipelines with classifier-free guidance)")
    p.add_argument("--num", type=int_at_least(1), default=1, help="images per prompt")
    p.add_argument("--steps", type=int_at_least(1), default=None, help="denoising steps (default: the pipeline's)")
    p.add_argument("--guidance", type=finite_float(0.0), default=None,
                   help="guidance scale (classifier-free, or a guidance-distilled model's input, as the "
                        "pipeline takes it)")
    p.add_argument("--size", type=_size, default=None, help="HEIGHTxWIDTH in pixels (default: the pipeline's)")
    p.add_argument("--seed", type=int_at_least(0, below=SEED_LIMIT), default=0, help="the initial noise's seed")
    p.add_argument("--max-sequence-length", type=int_at_least(1), default=None, help="T5 tokens per prompt")
    p.add_argument("--lora", action="append", default=[], help="a diffusers / PEFT LoRA file merged into the "
                                                             "transformer (repeat for several)")
    p.add_argument("--lora-scale", type=finite_float(), default=1.0, help="the weight of each --lora (default 1)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype of the networks")
    p.add_argument("--out", required=True, help="a folder for the PNGs and grid.png")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    from unigen.errors import UnigenError
    try:
        return _generate(args)
    except UnigenError as e:  # expected failures: one line; anything else keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


def _slug(prompt: str, n: int = 40) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "_", prompt).strip("_")[:n] or "empty"


def _generate(args) -> int:
    import numpy as np
    from PIL import Image

    from unigen.cli_args import check_output_folder
    from unigen.errors import ConfigError
    from unigen.images import save_grid
    from unigen.pipelines import from_pretrained

    check_output_folder(args.out, "--out")  # before the pipeline is read: a bad --out costs no generation
    for path in args.lora:  # a missing file costs no pipeline load
        if not os.path.isfile(path):
            raise ConfigError(f"--lora {path}: no such file")
    pipe = from_pretrained(args.pipeline, revision=args.revision, dtype=args.dtype)
    for path in args.lora:
        pipe.load_lora_weights(path, scale=args.lora_scale)
    call = dict(num_images_per_prompt=args.num, seed=args.seed, output_type="np")
    for key, value in (("num_inference_steps", args.steps), ("guidance_scale", args.guidance),
                       ("max_sequence_length", args.max_sequence_length), ("negative_prompt", args.negative_prompt)):
        if value is not None:
            call[key] = value
    if args.size is not None:
        call["height"], call["width"] = args.size
    images = np.asarray(pipe(list(args.prompt), **call), np.float32)  # (P * num, H, W, 3) in [0, 1]
    os.makedirs(args.out, exist_ok=True)
    for i, image in enumerate(images):
        p, k = divmod(i, args.num)
        Image.fromarray(np.round(image * 255).clip(0, 255).astype(np.uint8)).save(
            os.path.join(args.out, f"{p:02d}_{k:02d}_{_slug(args.prompt[p])}.png"))
    grid = os.path.join(args.out, "grid.png")
    save_grid(grid, images * 2.0 - 1.0, rows=len(args.prompt), labels=list(args.prompt))
    lora = f", {len(args.lora)} LoRA(s) at scale {args.lora_scale:g}" if args.lora else ""
    print(f"wrote {len(images)} images of {images.shape[1]}x{images.shape[2]} ({type(pipe).__name__}{lora}) and "
          f"{grid} into {args.out}")
    return 0


def console_main() -> int:
    """The installed command (see unigen/cpu_malloc.py)."""
    from unigen.cpu_malloc import console_entry

    return console_entry(main)


if __name__ == "__main__":
    raise SystemExit(console_main())
