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
    """Read and validate FILE.npz; raise ValueError naming the problem."""
    if not os.path.exists(path):
        raise ValueError(f"--samples {path!r}: no such file")
    from unigen.eval.protocol import validate_samples

    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("images",) if k not in z.files]
        if missing:
            raise ValueError(f"{path}: missing array(s) {missing}; found {z.files}. Save with "
                             f"np.savez(path, images=(N,H,W,1) in [-1,1], labels=(N,))")
        seeds = z["seed"] if "seed" in z.files else None
        labels = z["labels"] if "labels" in z.files else None
        images, labels, seeds = validate_samples(z["images"], labels, seeds)
    return {"images": images, "labels": labels, "seed": seeds}


def _parse(argv):
    p = argparse.ArgumentParser(prog="infer/evaluate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", required=True, help="npz with images, labels[, seed]")
    p.add_argument("--json", default=None, help="also write all numbers to this JSON file")
    p.add_argument("--baseline-n", type=int, default=None,
                   help="yardstick samples per seed (default: the samples' n per seed, "
                        "since FD depends on n)")
    p.add_argument("--no-baselines", action="store_true", help="skip the yardstick rows")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    try:
        s = load_samples(args.samples)
    except ValueError as e:
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
