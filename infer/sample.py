"""Sample a trained model: `python infer/sample.py --workdir DIR --per-class K --seed S --out FILE.npz`.

See `unigen/infer/sample.py` for the flags (also installed as the `unigen-sample` command).
"""

from unigen.infer.sample import main

if __name__ == "__main__":
    raise SystemExit(main())
