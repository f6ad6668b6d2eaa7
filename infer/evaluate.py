"""Evaluate digit samples: `python infer/evaluate.py --samples FILE.npz [--json OUT.json]`.

See `unigen/infer/evaluate.py` for the flags (also installed as the `unigen-evaluate` command).
"""

from unigen.infer.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
