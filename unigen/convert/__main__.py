"""`python -m unigen.convert SRC DST`: any source `from_pretrained` reads -> a unigen
pretrained folder (orbax) that `from_pretrained` loads and a training run can start from
(`--config.init_from=DST`)."""

from __future__ import annotations

import os
import sys


def main(argv=None):
    from unigen.cli_args import Parser, int_at_least

    parser = Parser(prog="python -m unigen.convert", description=__doc__)
    parser.add_argument("src", help="official DiT .pt/.safetensors, diffusers folder, unigen folder, "
                                    "or hub repo id org/name")
    parser.add_argument("dst", help="output folder (unigen format)")
    parser.add_argument("--subfolder", default=None, help="a pipeline folder's component, e.g. transformer")
    parser.add_argument("--revision", default=None, help="a hub id's branch, tag or commit hash (default main)")
    parser.add_argument("--num-heads", type=int_at_least(1), default=None,
                        help="head count, for an official checkpoint of non-standard width")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty DST, replacing its params/ and unigen_config.json (only those)")
    args = parser.parse_args(argv)
    # What unigen.from_pretrained does for a path or hub id, from this package and unigen.hub: importing
    # unigen.pretrained (which imports this package) from here would make the two depend on each other.
    from unigen.convert.load import load
    from unigen.convert.unigen_format import save_pretrained
    from unigen.errors import UnigenError
    from unigen.hub import resolve

    try:
        check_destination(args.src, args.dst, overwrite=args.overwrite)
        model = load(resolve(args.src, subfolder=args.subfolder, revision=args.revision),
                     **({} if args.num_heads is None else {"num_heads": args.num_heads}))
        save_pretrained(model, args.dst)
    except UnigenError as e:  # expected failures: one line; anything else keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst}: {type(model).__name__} {model.cfg}")
    return 0


def check_destination(src: str, dst: str, *, overwrite: bool) -> None:
    """Refuse, before anything is read, a DST that converting would damage or shadow: a file; a folder
    another registered source lives in (a training work dir: from_pretrained(DST) and --pretrained DST
    would read the converted model instead of the trained one, as unigen's own format is tried first,
    unigen/convert/load.py); SRC itself; a non-empty folder without --overwrite. save_pretrained
    writes DST/params (orbax, replaced whole) and DST/unigen_config.json and nothing else, so
    --overwrite replaces exactly those."""
    from unigen.convert import registry
    from unigen.errors import ConfigError
    from unigen.cli_args import check_output_folder

    check_output_folder(dst, "DST")
    if not os.path.isdir(dst):
        return
    found = registry.folder_loader(dst)
    if found is not None:
        raise ConfigError(f"DST {dst} is a {found[0]}; converting into it would make from_pretrained read the "
                          f"converted model instead (refused even with --overwrite): give a new folder")
    if os.path.exists(src) and os.path.samefile(src, dst):
        raise ConfigError(f"DST {dst} is SRC; give a new folder")
    if os.listdir(dst) and not overwrite:
        raise ConfigError(f"DST {dst} is not empty; give a new or empty folder, or --overwrite to replace its "
                          f"params/ and unigen_config.json")


if __name__ == "__main__":
    raise SystemExit(main())
