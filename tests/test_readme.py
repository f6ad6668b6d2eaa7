"""Every command the README and the family pages (docs/*.md) show runs as written, in a quick mode:
the same command line with overrides that make it small (a 2-step tiny model, a few sampling
steps). Each page is one test, its commands in order in one scratch folder, so `pytest -n 2`
spreads the pages over its workers; a work dir that later pages read (runs/digits, runs/lzn_repr)
is trained once per session in a folder the workers share. Multi-device commands run on 8 fake
CPU devices."""

import fcntl
import glob
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from fake_devices import fake_devices_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_TRAIN = ["--config.train.steps=2", "--config.train.checkpoint_every=2", "--config.train.sample_every=0",
               "--config.eval.at_end=False", "--config.train.batch_size=16", "--no-progress"]
# A tiny model of each kind the README trains, by config file.
QUICK_MODEL = {
    "mmdit_digits.py": ["--config.model.num_layers=1", "--config.model.num_attention_heads=2",
                        "--config.model.attention_head_dim=16", "--config.model.caption_projection_dim=32"],
}
_TINY_LZN = ["--config.model.encoder.width=16", "--config.model.encoder.depth=1", "--config.model.encoder.num_heads=2"]
_TINY_DECODER = ["--config.model.decoder.depth=1", "--config.model.decoder.hidden_size=32",
                 "--config.model.decoder.num_heads=2"]
QUICK_MODEL.update({"lzn_gen_digits.py": _TINY_LZN + _TINY_DECODER, "lzn_cls_digits.py": _TINY_LZN + _TINY_DECODER,
                    "lzn_repr_digits.py": _TINY_LZN})
# The tokenizer aligned with the tiny LZN encoder above (tokens 16 wide).
QUICK_MODEL["vavae_digits.py"] = ["--config.model.vf_dim=16", "--config.model.autoencoder.block_out_channels=(8, 16)",
                                  "--config.model.autoencoder.norm_num_groups=4"]
QUICK_DIT = ["--config.model.depth=1", "--config.model.hidden_size=32", "--config.model.num_heads=2"]
# The RAE on the tiny LZN encoder above (its model.encoder must describe that encoder), and a DiT^DH
# on its 4x4x16 latents.
QUICK_MODEL["rae_digits.py"] = _TINY_LZN + ["--config.model.decoder_hidden_size=32", "--config.model.decoder_num_layers=1",
                                            "--config.model.decoder_intermediate_size=64", "--config.rae.stats_images=200"]
QUICK_MODEL["ditdh_digits.py"] = QUICK_DIT + ["--config.model.head_depth=1", "--config.model.head_hidden_size=32",
                                              "--config.model.head_num_heads=2", "--config.data.latent_channels=16"]

# A tiny U-ViT on the quick LZN encoder above (its 64-d embedding is the clip_img slot).
QUICK_MODEL["unidiffuser_digits.py"] = ["--config.model.num_layers=1", "--config.model.num_attention_heads=2",
                                        "--config.model.attention_head_dim=8"]


def quick_train(words) -> list[str]:
    config = next((w.split("=", 1)[1] if "=" in w else words[i + 1]) for i, w in enumerate(words)
                  if w.startswith("--config") and not w.startswith("--config."))
    return QUICK_TRAIN + QUICK_MODEL.get(os.path.basename(config), QUICK_DIT)
QUICK_SAMPLE = ["--steps", "2"]
QUICK_BENCH = {"lzn_generation.py": ["--quick", "--no-progress"], "vavae_alignment.py": ["--quick", "--no-progress"]}


# The pages whose bash blocks run, in reading order; a page's commands may use the work dirs that
# the pages before it train (the main job's runs/digits; the LZN representation encoder
# runs/lzn_repr, which the tokenizers and UniDiffuser take as a frozen part).
PAGES = ("README.md", "docs/dit_digits.md", "docs/text_to_image.md", "docs/lzn.md", "docs/latent_diffusion.md",
         "docs/rae.md", "docs/unidiffuser.md", "docs/multi_gpu.md", "docs/library.md")
# The folders of the repository the commands name, linked into each scratch folder they run in.
SOURCE_FOLDERS = ("train", "infer", "configs", "bench")


def _bash_blocks(page: str) -> list[str]:
    with open(os.path.join(ROOT, page)) as f:
        return re.findall(r"```bash\n(.*?)```", f.read(), re.S)


def test_every_page_with_commands_is_in_the_run_order():
    pages = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
    unlisted = [p for p in pages if _bash_blocks(p) and p not in PAGES]
    assert not unlisted, f"{unlisted} show bash commands: add them to PAGES in tests/test_readme.py, after the pages " \
                         f"whose work dirs they use"
    assert all(os.path.exists(os.path.join(ROOT, p)) for p in PAGES)


def readme_commands(pages=PAGES) -> list[list[str]]:
    """The shell commands of the pages' bash blocks (continuations joined, `&&` split), page by page
    in `pages` order, with installs, test runs and launcher prefixes (srun ...) left out."""
    commands = []
    for block in (b for page in pages for b in _bash_blocks(page)):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if "python" in words and "pytest" not in words:
                    i = words.index("python")  # keep VAR=value before it, drop launchers (srun ...)
                    commands.append([w for w in words[:i] if re.fullmatch(r"[A-Z_]+=.*", w)] + words[i:])
    return commands


def written_work_dir(words) -> str | None:
    """The work dir a command writes: the --workdir of a training or bench script (infer/ scripts
    read theirs; None for those and for commands without one)."""
    script = words[words.index("python") + 1]
    return words[words.index("--workdir") + 1] if not script.startswith("infer/") and "--workdir" in words else None


def work_dirs_read(words) -> set[str]:
    """The relative runs/... folders a command names (as a value or after `=`), less the one it writes."""
    named = {m.group(1) for w in words for m in [re.match(r"(?:[^=]*=)?(runs/[\w.-]+)$", w)] if m}
    return named - {written_work_dir(words)}


def shared_work_dirs() -> dict[str, list[str]]:
    """{work dir: the command that writes it} for the work dirs that a page writes and a later page
    reads. The page tests run on separate workers, so each of these is trained once per session in
    a folder all workers share (`_shared_work_dir`) and linked into the page folders."""
    writers, shared = {}, {}
    for page in PAGES:
        for words in readme_commands([page]):
            for read in work_dirs_read(words):
                if read in writers and writers[read][0] != page:
                    shared[read] = writers[read][1]
            if written_work_dir(words):
                writers[written_work_dir(words)] = (page, words)
    return shared


def test_every_work_dir_a_command_reads_was_written_before_it():
    written = set()
    for words in readme_commands():
        assert work_dirs_read(words) <= written, f"{shlex.join(words)} reads {sorted(work_dirs_read(words) - written)}" \
                                                 f", which no command before it (PAGES order) writes"
        written.add(written_work_dir(words))


def test_the_pages_show_the_main_jobs():
    scripts = [w[w.index("python") + 1] for w in readme_commands()]
    assert scripts.count("train/train.py") >= 4 and "infer/sample.py" in scripts and "infer/evaluate.py" in scripts


def _scratch_folder(path):
    os.makedirs(path / "runs", exist_ok=True)
    for name in SOURCE_FOLDERS:
        try:
            os.symlink(os.path.join(ROOT, name), path / name)
        except FileExistsError:  # the shared folder: another worker linked it
            pass
    return path


def _run(words, cwd):
    words = list(words)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):  # leading VAR=value assignments
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    if (any(w.startswith("--config.mesh.") and not w.endswith("=1") for w in words)
            and "device_count" not in env.get("XLA_FLAGS", "")):
        env = fake_devices_env(8, env)  # a multi-GPU command, on fake devices
    if "--workdir" in words:  # an absolute work dir (a cluster's shared disk) goes to the scratch folder
        i = words.index("--workdir") + 1
        if os.path.isabs(words[i]):
            words[i] = os.path.join(cwd, "abs", os.path.basename(words[i]))
    script = words[1]
    extra = (quick_train(words) if script.endswith("train.py") else QUICK_SAMPLE if script.endswith("sample.py")
             else QUICK_BENCH.get(os.path.basename(script), []))
    cmd = [sys.executable, *words[1:], *extra]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{shlex.join(words)}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    if "--out" in words:
        written = os.path.join(cwd, words[words.index("--out") + 1])
        assert os.path.exists(written), f"{shlex.join(words)} wrote no {written}"
    return out


def _shared_work_dir(work_dir, session_dir) -> str:
    """`work_dir` trained once in this session, in `session_dir` (shared by all workers): the
    first test that needs it trains it while the others wait on its lock. A work dir left without
    its done-mark (its training failed) is trained again, so each test that needs it reports why."""
    root = _scratch_folder(pathlib.Path(session_dir) / "readme-shared")
    path, done = root / work_dir, root / f"{work_dir}.done"
    with open(root / f"{work_dir}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            words = shared_work_dirs()[work_dir]
            for read in work_dirs_read(words):  # a shared work dir only reads shared ones, trained earlier
                _shared_work_dir(read, session_dir)
            _run(words, root)
            done.touch()
    return str(path)


def _link_shared(work_dir, session_dir, cwd):
    if not os.path.lexists(cwd / work_dir):
        os.symlink(_shared_work_dir(work_dir, session_dir), cwd / work_dir)


@pytest.mark.parametrize("page", [p for p in PAGES if readme_commands([p])])
def test_page_commands_run_in_quick_mode(page, tmp_path, session_dir):
    """The page's commands, in order, in one scratch folder; the work dirs it shares with other
    pages come from the session's shared folder (trained there by whichever page test came first)."""
    cwd = _scratch_folder(tmp_path)
    shared = shared_work_dirs()
    for words in readme_commands([page]):
        for read in work_dirs_read(words) & set(shared):
            _link_shared(read, session_dir, cwd)
        if written_work_dir(words) in shared:
            _link_shared(written_work_dir(words), session_dir, cwd)
        else:
            _run(words, cwd)


def test_readme_library_snippet_runs():
    with open(os.path.join(ROOT, "README.md")) as f:
        (snippet,) = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    scope = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    assert scope["out"].shape == (2, 32, 32, 4) and scope["latents"].shape == (2, 32, 32, 4)


def test_readme_is_a_short_front_page():
    """The README stays a five-minute read; results and how-to details live on the family pages."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    assert len(text.splitlines()) < 200
    assert '<!-- test-command -->\n```bash\npip install -e ".[data,test]" && pytest' in text  # read by .ci/run
    assert 'pip install -e ".[data]" && python train/train.py --config configs/dit_digits.py' in text
    for page in PAGES[1:]:
        assert f"]({page})" in text, f"the README links no {page}"
