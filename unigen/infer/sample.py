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

What a work dir can draw is its task's (unigen/tasks/requests.py): `--mode NAME` picks one of
the task's sample requests, each with its own flags, and `--workdir DIR --help` lists them. The
class grid is the default; `--protocol` draws the evaluation protocol (it writes `labels` and a
`seed` array, and reproduces the trainer's eval.json); a task that takes text offers `--prompt
"a handwritten 7" --per-prompt K`, a multi-modal one its modes (docs/<family>.md shows each).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def _parser(requests=(), arguments=(), add_help=True, need_out=True):
    """The options every source takes, then those of the task's sample `requests` (or plain `arguments`)."""
    from unigen.cli_args import SEED_LIMIT, Parser, finite_float, guided_channels, int_at_least
    from unigen.tasks.requests import add_arguments

    positive, seed = int_at_least(1), int_at_least(0, below=SEED_LIMIT)
    p = Parser(prog="infer/sample.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
               add_help=add_help)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="a unigen training work dir (`--workdir DIR --help` lists what its task "
                                       "draws and the flags of each)")
    src.add_argument("--pretrained", help="any path unigen.from_pretrained reads (a DiT), or a diffusers DiT "
                                          "pipeline folder (model_index.json); a hub id org/name too")
    p.add_argument("--revision", default=None, help="with a hub id: a branch, tag or commit hash (default main)")
    p.add_argument("--out", required=need_out, help="output .npz (a .png grid is written beside it)")
    p.add_argument("--vae", default=None, help="a pipeline folder's VAE: replaces or supplies its vae/ "
                                               "(any AutoencoderKL path unigen.from_pretrained reads)")
    p.add_argument("--seed", type=seed, default=0, help="the sampling noise's seed")
    p.add_argument("--sampler", default=None, help="a registered sampler: ddpm | ddim | dpm_solver_2m | euler | heun "
                                                   "| ... (unigen.diffusion.register_sampler)")
    p.add_argument("--steps", type=positive, default=None, help="sampling steps")
    p.add_argument("--cfg-scale", type=finite_float(0.0), default=None,
                   help="classifier-free guidance scale (1 = off)")
    p.add_argument("--guided-channels", type=guided_channels, default=None,
                   help="guide only the first N output channels ('dit' = 3, the official DiT behaviour)")
    p.add_argument("--batch-size", type=positive, default=None,
                   help="samples per compiled batch (default: the config's eval.batch_size, else 500); "
                        "samples do not depend on it")
    if requests:
        add_arguments(p, requests)
    for argument in arguments:
        argument.add_to(p)
    return p


def _parse(argv):
    """The source and output options; the rest is parsed once the task (and so its requests) is known."""
    argv = sys.argv[1:] if argv is None else list(argv)
    wants_help = any(a in ("-h", "--help") for a in argv)
    if wants_help and not any(a.split("=")[0] in ("--workdir", "--pretrained") for a in argv):
        _parser().parse_args(["--help"])  # prints the common options and exits
    # With a source and --help, the help lists the source's task's own flags (printed once it is read).
    args, _ = _parser(add_help=False, need_out=not wants_help).parse_known_args(argv)
    args.argv, args.wants_help = argv, wants_help
    return args


def _sampler_arguments(name: str):
    """The flags of sampler `name`'s own options (its registered schema: DDIM's --eta, --clip-denoised);
    none for an unknown sampler, which the generator then refuses naming the registered ones."""
    from unigen.diffusion.registry import get_sampler
    from unigen.tasks.requests import schema_arguments
    try:
        entry = get_sampler(name)
    except ValueError:
        return ()
    return schema_arguments(entry.options, f"{name}'s option")


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

    from unigen.cli_args import check_output_file
    from unigen.errors import ConfigError
    from unigen.images import save_grid
    from unigen.tasks.requests import CLASS, CLASSES, PER_CLASS, choose, given_classes

    if not args.wants_help:
        if not args.out.endswith(".npz"):
            raise ConfigError(f"--out {args.out!r} must end with .npz")
        # Where the samples go is checked before any model is read: a bad --out never costs a sampling run.
        check_output_file(args.out, "--out")
        check_output_file(args.out[:-4] + ".png", "--out (its .png grid)")
    if args.pretrained:
        from unigen.hub import resolve
        from unigen.pipelines import is_pipeline_folder
        args.pretrained = resolve(args.pretrained, revision=args.revision)  # a hub id -> its cached snapshot
        if is_pipeline_folder(args.pretrained):
            from unigen.infer.sample_pipeline import sample_pipeline
            given = vars(_parser(arguments=(PER_CLASS, CLASSES, CLASS), need_out=not args.wants_help)
                         .parse_args(args.argv))
            return sample_pipeline(args, PER_CLASS.default if given["per_class"] is None else given["per_class"],
                                   given_classes(given))
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
    else:
        from unigen.pretrained import from_pretrained
        from unigen.tasks import released_task
        model = from_pretrained(args.pretrained)
        cfg, task = released_task(model)
    requests = task.sample_requests()
    if not requests:
        raise ConfigError(f"task {task.name!r} draws no samples (it trains no generative model); its work dir's "
                          f"evaluation is in eval.json")
    # The task's own flags and the sampler's own options (--help lists them and exits here); unknown
    # ones are refused.
    sampler = args.sampler or cfg.sample.sampler
    options = _sampler_arguments(sampler)
    given = vars(_parser(requests, options, need_out=not args.wants_help).parse_args(args.argv))
    request = choose(requests, given["mode"], given)
    if args.workdir:
        model = load_model_for_inference(args.workdir)
    settings = {k: getattr(args, k) for k in ("sampler", "steps", "cfg_scale") if getattr(args, k) is not None}
    if args.guided_channels is not None:
        settings["guided_channels"] = args.guided_channels
    if options:  # the config's values of the sampler's fields, with the flags given on top
        from unigen.diffusion.registry import sampler_options
        section = {**cfg.sample, **{a.dest: given[a.dest] for a in options if given[a.dest] is not None}}
        settings["sampler_options"] = sampler_options(section, sampler)
    graphdef, state = nnx.split(model)
    try:
        gen = task.generator(cfg.sample, graphdef, **settings)
    except ValueError as e:  # a sampler that does not fit the objective, guidance without a null condition
        raise ConfigError(f"--sampler/--steps/--cfg-scale: {e}") from None
    batch_size = args.batch_size or (cfg.eval.batch_size if "eval" in cfg else 500)

    def generate(cond, num, seed, label=None, **options):  # images: a latent model's samples decoded to pixels
        samples = gen((state,), cond, jax.random.PRNGKey(seed), num=num, batch_size=batch_size, progress=label,
                      **options)
        return task.decode_samples(samples)

    drawn = request.run(request.fill(given), generate, args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, **drawn.arrays)
    png = args.out[:-4] + ".png"
    if drawn.grid is not None:
        save_grid(png, drawn.grid, rows=drawn.rows, labels=drawn.row_labels)
    for line in drawn.lines:
        print(line)
    print(f"wrote {args.out} ({drawn.count} samples, {request.name}, {gen.sampler} {gen.steps} steps)"
          + (f" and {png}" if drawn.grid is not None else ""))
    return 0


def console_main() -> int:
    """The installed command (see unigen/cpu_malloc.py)."""
    from unigen.cpu_malloc import console_entry

    return console_entry(main)


if __name__ == "__main__":
    raise SystemExit(console_main())
