"""Session-wide settings, made once in the process that starts the tests, before any test imports
jax; the workers of `pytest -n N` and every subprocess a test starts (the README commands, the
notebook kernels, multi-process runs) inherit them through the environment. A variable the
caller set already is left as it is.

- TFDS_DATA_DIR: a new folder for this session, with the `digits` data set prepared in it here,
  once. Tests never write into the user's ~/tensorflow_datasets, and parallel workers never
  prepare it at the same time.
- The JAX persistent compilation cache, in a new folder for this session: many tests and
  subprocesses compile the same tiny programs (a resumed run, the sampler after training, the
  evaluation classifier); each is compiled once per session. An entry is keyed by the program,
  the compile options and the XLA flags, so it changes no number.
"""

import os
import shutil
import tempfile

_CREATED = []  # folders this session made, removed when it ends


def _session_folder(name):
    path = tempfile.mkdtemp(prefix=f"unigen-tests-{name}-")
    _CREATED.append(path)
    return path


def pytest_configure(config):
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: the controller set everything up
        return
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        os.environ["JAX_COMPILATION_CACHE_DIR"] = _session_folder("jax-cache")
        # Cache every program, however quick to compile: most of the suite's are small.
        os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    if not os.environ.get("TFDS_DATA_DIR"):
        os.environ["TFDS_DATA_DIR"] = _session_folder("tfds")
    from unigen.data.tfds_source import prepare_digits

    prepare_digits(os.environ["TFDS_DATA_DIR"])


def pytest_unconfigure(config):
    while _CREATED:
        shutil.rmtree(_CREATED.pop(), ignore_errors=True)


# The files that take longest, longest first (their seconds on 2 cores, from `--durations=0`:
# ~600 each for the README and notebook tests, then ~350 down to ~50). They start first, so the
# workers of `pytest -n 2` (each file whole on one worker: pyproject's --dist loadfile
# --no-loadscope-reorder) end at about the same time, instead of one running the README's
# commands alone at the end.
SLOWEST_FIRST = ("test_readme.py", "test_notebook.py", "test_training.py", "test_unidiffuser.py", "test_lzn.py",
                 "test_fingerprints.py", "test_reliability.py", "test_vavae.py", "test_rae.py", "test_parallel.py",
                 "test_plugins.py", "test_released_encoders.py", "test_dit_pipeline.py", "test_released_networks.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    # A stable sort: each file's tests stay together and in their own order.
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
