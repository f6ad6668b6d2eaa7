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
- UNIGEN_TESTS_SESSION_DIR (the `session_dir` fixture): a new folder for this session that every
  worker sees, where tests on different workers build once what they share (under a lock);
  always new.

Below: which tests are end to end (the `e2e` marker: `pytest -m "not e2e"` is the fast tier), how
`pytest -n 2` spreads the tests over its workers, and in which order they start.
"""

import os
import shutil
import tempfile

import pytest

_CREATED = []  # folders this session made, removed when it ends


def _session_folder(name):
    path = tempfile.mkdtemp(prefix=f"unigen-tests-{name}-")
    _CREATED.append(path)
    return path


def pytest_configure(config):
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: the controller set everything up
        return
    os.environ["UNIGEN_TESTS_SESSION_DIR"] = _session_folder("session")
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        os.environ["JAX_COMPILATION_CACHE_DIR"] = _session_folder("jax-cache")
        # Cache every program, however quick to compile: most of the suite's are small.
        os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    if not os.environ.get("TFDS_DATA_DIR"):
        os.environ["TFDS_DATA_DIR"] = _session_folder("tfds")
    from unigen.data.tfds_source import prepare_digits

    prepare_digits(os.environ["TFDS_DATA_DIR"])


@pytest.fixture(scope="session")
def session_dir() -> str:
    """A folder of this session shared by all its workers (tests/test_readme.py trains the work dirs
    several pages read there once)."""
    return os.environ["UNIGEN_TESTS_SESSION_DIR"]


def pytest_unconfigure(config):
    while _CREATED:
        shutil.rmtree(_CREATED.pop(), ignore_errors=True)


# The files whose tests `pytest -n 2` hands to its workers one by one: each test is minutes of
# subprocesses or a notebook kernel, and shares nothing with the others of its file but what it
# builds in `session_dir`. Every other file goes whole to one worker (its module fixtures are
# built once).
SPREAD_FILES = ("test_readme.py", "test_notebook.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """pyproject's `--dist loadfile`, except that the tests of SPREAD_FILES are units of their own."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LoadFileSpreadingSome(LoadFileScheduling):
        def _split_scope(self, nodeid):
            file = super()._split_scope(nodeid)
            return nodeid if os.path.basename(file) in SPREAD_FILES else file

    return LoadFileSpreadingSome(config, log)


EVERY_TEST = "every test"
# The end-to-end tests, by file: each runs whole jobs (train, evaluate, sample) as subprocesses or,
# a few, in-process, notebook kernels, a run killed with SIGKILL and resumed, or several
# processes. The fast tier (`pytest -m "not e2e" -n 2`) leaves them out; CI (the README's test
# command) runs every test. A name covers every parametrization of that test function.
E2E_TESTS = {
    "test_readme.py": ("test_page_commands_run_in_quick_mode",),  # every command of the pages, as subprocesses
    "test_notebook.py": EVERY_TEST,                                # notebook kernels that train and sample
    "test_multiprocess.py": EVERY_TEST,                            # two JAX processes on one mesh
    "test_fingerprints.py": ("test_quick_mode_fingerprint",),      # each config's quick job, infer/sample.py
    "test_training.py": ("test_resume_after_sigkill_is_bitwise_identical",  # SIGKILL, resume: train.py processes
                         "test_cli_trains_fsdp_on_eight_fake_devices"),     # train.py on 8 fake devices
    "test_reliability.py": ("test_damaged_latest_checkpoint_is_moved_aside_and_the_run_resumes",  # train.py,
                            "test_expected_failures_print_one_error_line",                        # sample.py,
                            "test_finished_run_is_not_retrained_and_protocol_reproduces_eval"),   # evaluate.py
    "test_reliability_workdir.py": ("test_a_second_training_is_refused_at_once_and_a_killed_one_leaves_no_lock",
                                    "test_a_full_disk_is_one_line_and_the_run_resumes",
                                    "test_a_failed_first_run_leaves_no_work_dir_to_trap_the_rerun",
                                    "test_sampling_falls_back_from_a_damaged_checkpoint_and_changes_nothing",
                                    "test_damaged_frozen_parts_are_rebuilt_by_sampler_and_trainer"),  # same
    "test_plugins.py": ("test_outside_kind_and_task_train_resume_and_sample",   # train.py, resume, sample.py
                        "test_outside_objective_sampler_and_sample_request"),
    "test_unidiffuser.py": ("test_modes_through_the_sampler_and_infer_cli",),  # sample.py, each mode
    "test_unreadable_files.py": ("test_damaged_work_dir_config_as_subprocesses",),  # train.py, sample.py
    "test_cli_inputs.py": ("test_real_entry_points",),             # the scripts and console entry points
    "test_dit_pipeline.py": ("test_cli_writes_grid_images_and_npz",),  # the DiT pipeline's CLI
    # whole quick jobs in-process: a config trained, evaluated and sampled
    "test_lzn.py": ("test_generation_task_trains_samples_and_evaluates",
                    "test_classification_task_classifies_and_generates_each_class",
                    "test_representation_task_trains_on_two_views_and_probes"),
    "test_text_to_image.py": ("test_mmdit_digits_quick_job_samples_prompts_and_protocol",),
    "test_prompt_encoders.py": ("test_text_to_image_job_trains_and_samples_with_a_clip_folder",),  # CLIP encoder
    "test_vavae.py": ("test_tokenizer_then_latent_diffusion_on_digits_quick",),  # tokenizer, then LightningDiT
    "test_pipelines_sharded.py": ("test_sharded_pipelines_match_one_device",),  # SD3 / Flux on 8 fake devices
}

# The work units of `pytest -n 2` that take longest, longest first: files, and the tests of
# SPREAD_FILES as file::test (from `--durations=0` of each file on 2 cores shared with other work:
# 820 s for test_training.py, 490 for the latent-diffusion page, down to ~50). They start first,
# so the workers end at about the same time instead of one running a long unit alone at the end;
# the units not named follow in collection order.
SLOWEST_FIRST = (
    "test_training.py", "test_unidiffuser.py",
    "test_readme.py::test_page_commands_run_in_quick_mode[docs/latent_diffusion.md]",
    "test_lzn.py", "test_fingerprints.py",
    "test_notebook.py::test_latent_zoning_notebook_runs",
    "test_reliability.py",
    "test_notebook.py::test_unidiffuser_notebook_runs",
    "test_readme.py::test_page_commands_run_in_quick_mode[docs/lzn.md]",
    "test_notebook.py::test_latent_diffusion_notebook_runs",
    "test_reliability_workdir.py",
    "test_readme.py::test_page_commands_run_in_quick_mode[docs/rae.md]",
    "test_notebook.py::test_rae_notebook_runs",
    "test_readme.py::test_page_commands_run_in_quick_mode[docs/unidiffuser.md]",
    "test_notebook.py::test_text_to_image_notebook_runs",
    "test_plugins.py",
    "test_readme.py::test_page_commands_run_in_quick_mode[docs/text_to_image.md]",
    "test_readme.py::test_page_commands_run_in_quick_mode[docs/multi_gpu.md]",
    "test_notebook.py::test_pipelines_notebook_runs",
    "test_notebook.py::test_quickstart_notebook_runs",
    "test_prompt_encoders.py", "test_flux_pipeline.py", "test_sd3_pipeline.py", "test_flux.py", "test_clip.py",
    "test_lzn_flow.py", "test_multiprocess.py", "test_dit_pipeline.py", "test_vavae.py", "test_parallel.py",
    "test_rae.py", "test_text_to_image.py",
    "test_readme.py::test_page_commands_run_in_quick_mode[docs/dit_digits.md]",
    "test_readme.py::test_readme_library_snippet_runs",
    "test_released_encoders.py", "test_cli_inputs.py",
)


def _check_e2e_names():
    """A UsageError for a name in E2E_TESTS that its file no longer defines (a renamed test would
    silently join the fast tier)."""
    for file, names in E2E_TESTS.items():
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), file)
        if not os.path.exists(path):
            raise pytest.UsageError(f"tests/conftest.py E2E_TESTS names tests/{file}, which does not exist")
        with open(path) as f:
            source = f.read()
        gone = [n for n in ([] if names == EVERY_TEST else names) if f"def {n}(" not in source]
        if gone:
            raise pytest.UsageError(f"tests/conftest.py E2E_TESTS names {gone}, which tests/{file} does not define")


def _rank(item, rank):
    file = item.path.name
    for key in (f"{file}::{item.name}", f"{file}::{item.originalname}", file):
        if key in rank:
            return rank[key]
    return len(rank)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by the marks added here
def pytest_collection_modifyitems(session, config, items):
    _check_e2e_names()
    for item in items:
        names = E2E_TESTS.get(item.path.name, ())
        if names == EVERY_TEST or item.originalname in names:
            item.add_marker(pytest.mark.e2e)
    rank = {key: i for i, key in enumerate(SLOWEST_FIRST)}
    # A stable sort: the tests of a file (of a test, in SPREAD_FILES) stay together, in their order.
    items.sort(key=lambda item: _rank(item, rank))
