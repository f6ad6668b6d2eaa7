"""Train a unigen model: `python train/train.py --config configs/dit_digits.py --workdir DIR`.

See `unigen/training/cli.py` for the flags (the same entry point is the `unigen-train` command).
"""

from unigen.training.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
