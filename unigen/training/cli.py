"""`python train/train.py --config CONFIG.py --workdir DIR [--config.KEY=VALUE ...]`

Trains (or, on an existing work dir, resumes) the run the config describes. The config file and
its overrides are read by `ml_collections.config_flags` (`--config.train.steps=500`; a tuple as
`--config.model.attention_options="(('window', 1),)"`; unknown fields are errors). Multi-process
runs start jax.distributed from --coordinator_address/--num_processes/--process_id, or from the
environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; SLURM needs none).
"""

from __future__ import annotations

import os
import sys


def quiet_third_party_logs() -> None:
    """Hide the warnings of the libraries underneath (TFDS' "OpenCV is not installed", "Variant
    folder has no dataset_info.json", ...) that say nothing a unigen user can act on; errors
    still show."""
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.ERROR)


def parse_flags(argv: list[str]):
    """(config, flag values) from a command line; raises ConfigError with a one-line message."""
    from absl import flags
    from ml_collections import config_flags
    from ml_collections.config_flags.config_flags import UnsupportedOperationError

    from unigen.errors import ConfigError

    fv = flags.FlagValues()
    argv = ["train/train.py"] + [a.replace("--no-progress", "--noprogress") for a in argv]
    # sys_argv: ml_collections reads the `--config.x=` overrides from sys.argv unless given the
    # command line; an in-process main(argv) must use its own argv
    config = config_flags.DEFINE_config_file("config", None, "a Python config file defining get_config()",
                                             flag_values=fv, lock_config=True, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "where checkpoints, metrics and samples go", flag_values=fv)
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process)", flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "number of processes (multi-process)", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "this process's index (multi-process)", flag_values=fv)
    flags.DEFINE_boolean("progress", True, "show a progress bar (--noprogress: logs only)", flag_values=fv)
    if any(a in ("-h", "--help", "--helpfull") for a in argv):
        print(__doc__ + "\n" + fv.get_help())
        raise SystemExit(0)
    try:
        fv(argv)
    # absl / ml_collections: an unknown flag or field (AttributeError/KeyError, with a "did you
    # mean"), a value of the wrong type, an unreadable config file
    except (flags.Error, AttributeError, KeyError, TypeError, OSError, UnsupportedOperationError) as e:
        text = " ".join(str(e).replace("\\n", " ").split())
        raise ConfigError(text.strip("'\"")) from None
    if fv.config is None or not fv.workdir:
        raise ConfigError("--config CONFIG.py and --workdir DIR are required")
    try:
        config.value.keys  # noqa: B018  config_flags defers a config file it could not load to its first use
    except OSError as e:
        path = config_flags.get_config_filename(fv["config"])
        cause = (str(e.__cause__ or e).strip().splitlines() or [""])[-1].strip()
        why = "no such file" if not os.path.exists(path) else f"cannot be loaded ({cause})"
        raise ConfigError(f"--config {path}: {why}; give a Python file defining get_config(), e.g. "
                          f"configs/dit_digits.py") from None
    return config.value, fv


def main(argv=None) -> int:
    from unigen.errors import UnigenError

    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_third_party_logs()
    try:
        cfg, fv = parse_flags(argv)
        import unigen.parallel as parallel
        if fv.coordinator_address or fv.num_processes:
            parallel.initialize(fv.coordinator_address, fv.num_processes, fv.process_id)
        from unigen.training.loop import train
        result = train(cfg, fv.workdir, progress=fv.progress)
    except UnigenError as e:  # expected failures: one line; anything else keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done: step {result['step']}, loss {result.get('loss', float('nan')):.4f}; outputs in {fv.workdir}")
    return 0


def console_main() -> int:
    """The installed command (see unigen/cpu_malloc.py)."""
    from unigen.cpu_malloc import console_entry

    return console_entry(main)


if __name__ == "__main__":
    raise SystemExit(console_main())
