"""`python infer/evaluate.py --samples FILE.npz [--json OUT.json]` (also `unigen-evaluate`).

FILE.npz holds `images` (N, H, W, 1) in [-1, 1], `labels` (N,) in 0..9 (leave it out for
unconditional samples: no accuracy then) and optionally `seed` (N,), one seed id per sample: metrics are computed per seed and shown as
mean ± std across seeds. Prints a table with the samples and two yardsticks evaluated the
same way over the protocol's 3 seeds: a per-class 10-component GMM and the memoriser
(train images with the same labels). Protocol: unigen/eval/protocol.py; generate labels with
`unigen.eval.eval_labels(5000, seed)` for seeds 0, 1, 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def load_samples(path: str) -> dict[str, np.ndarray]:
    """Read and validate FILE.npz; raise SamplesError naming the file and the problem."""
    import zipfile
    import zlib

    from unigen.errors import SamplesError
    from unigen.eval.protocol import validate_samples

    if not os.path.exists(path):
        raise SamplesError(f"--samples {path!r}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z.files:
                raise SamplesError(f"{path}: no `images` array (found {z.files}). Save with "
                                   f"np.savez(path, images=(N,H,W,1) in [-1,1], labels=(N,))")
            arrays = {k: z[k] for k in ("images", "labels", "seed") if k in z.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:  # zlib: a damaged compressed member
        if isinstance(e, SamplesError):
            raise
        raise SamplesError(f"{path} is not a readable .npz file ({type(e).__name__}: {e}); "
                           f"write it again with np.savez") from None
    try:
        images, labels, seeds = validate_samples(arrays["images"], arrays.get("labels"), arrays.get("seed"))
    except ValueError as e:
        raise SamplesError(f"{path}: {e}") from None
    return {"images": images, "labels": labels, "seed": seeds}


def _parse(argv):
    from unigen.cli_args import Parser, int_at_least

    p = Parser(prog="infer/evaluate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", required=True, help="npz with images, labels[, seed]")
    p.add_argument("--json", default=None, help="also write all numbers to this JSON file")
    p.add_argument("--baseline-n", type=int_at_least(1), default=None,
                   help="yardstick samples per seed (default: the samples' n per seed, "
                        "since FD depends on n)")
    p.add_argument("--no-baselines", action="store_true", help="skip the yardstick rows")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    from unigen.training.cli import quiet_third_party_logs
    quiet_third_party_logs()
    from unigen.errors import UnigenError
    try:
        if args.json:  # checked first: a destination that cannot be written never costs an evaluation
            from unigen.cli_args import check_output_file
            check_output_file(args.json, "--json")
        s = load_samples(args.samples)
    except UnigenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from unigen.eval import report

    rows, text = report(s["images"], s["labels"], s["seed"], baseline_n=args.baseline_n,
                        with_baselines=not args.no_baselines, title=args.samples)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def console_main() -> int:
    """The installed command (see unigen/cpu_malloc.py)."""
    from unigen.cpu_malloc import console_entry

    return console_entry(main)


if __name__ == "__main__":
    raise SystemExit(console_main())
