"""`python -m unigen.convert SRC DST`: any source `from_pretrained` reads -> a unigen
pretrained folder (orbax) that `from_pretrained` loads and a training run can start from
(`--config.init_from=DST`)."""

from __future__ import annotations

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m unigen.convert", description=__doc__)
    parser.add_argument("src", help="official DiT .pt/.safetensors, diffusers folder, unigen folder, "
                                    "or hub repo id org/name")
    parser.add_argument("dst", help="output folder (unigen format)")
    parser.add_argument("--subfolder", default=None, help="a pipeline folder's component, e.g. transformer")
    parser.add_argument("--revision", default=None, help="a hub id's branch, tag or commit hash (default main)")
    parser.add_argument("--num-heads", type=int, default=None,
                        help="head count, for an official checkpoint of non-standard width")
    args = parser.parse_args(argv)
    import unigen
    from unigen.errors import UnigenError

    try:
        model = unigen.from_pretrained(args.src, subfolder=args.subfolder, revision=args.revision,
                                       **({} if args.num_heads is None else {"num_heads": args.num_heads}))
        unigen.save_pretrained(model, args.dst)
    except UnigenError as e:  # expected failures: one line; anything else keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst}: {type(model).__name__} {model.cfg}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
