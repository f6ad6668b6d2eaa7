"""Bad input to infer/sample.py, infer/evaluate.py and `python -m unigen.convert` is refused at once:
exit status 2, one `error:` line naming the flag or path, no traceback, before any model is read, and
every file of the work dir / destination byte-identical afterwards. Most cases run in-process through
each command's `main(argv)` (a subprocess costs ~5 s of imports); a few run the real entry points."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from unigen.convert.__main__ import main as convert_main
from unigen.infer.evaluate import main as evaluate_main
from unigen.infer.sample import main as sample_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "dit_digits.py")
TINY = ["--config.model.depth=1", "--config.model.hidden_size=32", "--config.model.num_heads=2",
        "--config.train.batch_size=16", "--config.train.warmup_steps=1", "--config.train.steps=2",
        "--config.train.sample_every=0", "--config.eval.at_end=False", "--no-progress"]


def _md5s(folder):
    return {os.path.relpath(os.path.join(d, f), folder): hashlib.md5(open(os.path.join(d, f), "rb").read()).digest()
            for d, _, files in os.walk(folder) for f in files}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A real (tiny, 2-step) training work dir."""
    wd = tmp_path_factory.mktemp("run") / "wd"
    out = subprocess.run([sys.executable, os.path.join(ROOT, "train", "train.py"), "--config", CONFIG,
                          "--workdir", str(wd), *TINY], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return wd


@pytest.fixture(scope="module")
def dit_folder(tmp_path_factory):
    """A random-weight diffusers DiTTransformer2DModel folder (a convert SRC)."""
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1, patch_size=2,
        sample_size=8, num_embeds_ada_norm=10, norm_type="ada_norm_zero", attention_bias=True)
    folder = tmp_path_factory.mktemp("dit") / "src"
    model.save_pretrained(str(folder))
    return folder


def _refused(main, argv, capsys, *expect):
    """Run a command's main in-process; assert one `error:` line containing each of `expect`."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's exit
        code = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for text in expect:
        assert text in lines[0], err
    return lines[0]


BAD_SAMPLE_FLAGS = [
    (["--cfg-scale", "nan"], "--cfg-scale"), (["--cfg-scale", "inf"], "--cfg-scale"),
    (["--cfg-scale=-inf"], "--cfg-scale"), (["--cfg-scale", "1e999"], "--cfg-scale"),
    (["--cfg-scale", "-1"], "--cfg-scale"), (["--cfg-scale", "x"], "--cfg-scale"),
    (["--steps", "0"], "--steps"), (["--steps", "2.5"], "--steps"), (["--batch-size", "-1"], "--batch-size"),
    (["--per-class", "0"], "--per-class"),
    (["--guided-channels", "abc"], "--guided-channels"), (["--guided-channels", "0"], "--guided-channels"),
    (["--seed", "-1"], "--seed"), (["--seed", str(2 ** 32)], "--seed"),
    (["--classes", "1,x"], "--classes"), (["--classes", "-1"], "--classes"), (["--class", "-2"], "--class"),
]


@pytest.mark.parametrize("flags,flag", BAD_SAMPLE_FLAGS, ids=[" ".join(f) for f, _ in BAD_SAMPLE_FLAGS])
def test_sample_refuses_bad_values_while_parsing(workdir, tmp_path, capsys, flags, flag):
    before = _md5s(workdir)
    line = _refused(sample_main, ["--workdir", workdir, "--out", tmp_path / "s.npz", *flags], capsys,
                    f"argument {flag}", "give ")
    assert flags[-1].partition("=")[2 if "=" in flags[-1] else 0] in line  # the value given (and the valid range)
    assert _md5s(workdir) == before and os.listdir(tmp_path) == []


def test_sample_flags_come_from_the_tasks_requests(workdir, tmp_path, capsys):
    # A DiT work dir's task draws a class grid or its protocol: another task's flags are not its options ...
    for flags in (["--per-prompt", "2"], ["--num", "4"], ["--mode", "t2i"]):
        _refused(sample_main, ["--workdir", workdir, "--out", tmp_path / "s.npz", *flags], capsys, flags[0])
    _refused(sample_main, ["--workdir", workdir, "--out", tmp_path / "s.npz", "--protocol", "--mode", "grid"], capsys,
             "--protocol is an argument of --mode protocol, not of --mode grid")
    # ... and a request's own flags check their values while parsing, as the common ones do.
    from unigen.infer.sample import _parser
    from unigen.tasks.requests import NUM, PER_PROMPT, PROMPT, SampleRequest
    parser = _parser((SampleRequest("text", "", None, (PROMPT, PER_PROMPT)), SampleRequest("joint", "", None, (NUM,))))
    for flags, flag in ((["--per-prompt", "0"], "--per-prompt"), (["--num", "-3"], "--num")):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(["--workdir", "w", "--out", "o.npz", *flags])
        line = capsys.readouterr().err.strip()
        assert e.value.code == 2 and f"argument {flag}" in line and "give an int >= 1" in line, line
    assert os.listdir(tmp_path) == []


def test_evaluate_and_convert_refuse_bad_values_while_parsing(dit_folder, tmp_path, capsys):
    _refused(evaluate_main, ["--samples", tmp_path / "s.npz", "--baseline-n", "0"], capsys, "--baseline-n", ">= 1")
    _refused(convert_main, [dit_folder, tmp_path / "dst", "--num-heads", "0"], capsys, "--num-heads", ">= 1")
    assert os.listdir(tmp_path) == []


def test_sample_checks_its_destinations_before_reading_the_model(workdir, tmp_path, capsys):
    before = _md5s(workdir)
    (tmp_path / "dir.npz").mkdir()
    (tmp_path / "afile").write_text("x")
    (tmp_path / "grid.png").mkdir()
    for out, expect in [(tmp_path / "dir.npz", "is a folder"), (tmp_path / "afile" / "s.npz", "is a file"),
                        (tmp_path / "afile" / "deeper" / "s.npz", "is a file"), (tmp_path / "grid.npz", "png")]:
        _refused(sample_main, ["--workdir", workdir, "--out", out, "--per-class", 1, "--steps", 2], capsys,
                 "--out", expect)
    assert sorted(os.listdir(tmp_path)) == ["afile", "dir.npz", "grid.png"] and os.listdir(tmp_path / "dir.npz") == []
    assert _md5s(workdir) == before


def test_sample_with_good_flags_samples(workdir, tmp_path, capsys):
    """The control of the refusals above: the same work dir and flags, valid, sample."""
    out = tmp_path / "new" / "s.npz"
    code = sample_main(["--workdir", str(workdir), "--out", str(out), "--per-class", "1", "--classes", "0,3",
                        "--steps", "2", "--cfg-scale", "1.5", "--guided-channels", "-1", "--batch-size", "2"])
    assert code == 0, capsys.readouterr().err
    with np.load(out) as z:
        assert z["images"].shape[0] == 2 and np.isfinite(z["images"]).all() and list(z["labels"]) == [0, 3]


def test_evaluate_checks_json_before_evaluating(tmp_path, capsys):
    samples = tmp_path / "s.npz"
    np.savez(samples, images=np.zeros((10, 28, 28, 1), np.float32), labels=np.arange(10))
    (tmp_path / "out.json").mkdir()
    (tmp_path / "afile").write_text("x")
    _refused(evaluate_main, ["--samples", samples, "--json", tmp_path / "out.json"], capsys, "--json", "is a folder")
    _refused(evaluate_main, ["--samples", samples, "--json", tmp_path / "afile" / "r.json"], capsys, "--json",
             "is a file")
    assert sorted(os.listdir(tmp_path)) == ["afile", "out.json", "s.npz"]


def test_convert_refuses_a_work_dir_a_file_and_a_non_empty_folder(workdir, dit_folder, tmp_path, capsys):
    before = _md5s(workdir)
    for extra in ([], ["--overwrite"]):  # a training work dir is never written into
        _refused(convert_main, [dit_folder, workdir, *extra], capsys, "training work dir", "even with --overwrite")
    assert _md5s(workdir) == before
    (tmp_path / "afile").write_text("x")
    _refused(convert_main, [dit_folder, tmp_path / "afile"], capsys, "DST", "is a file")
    _refused(convert_main, [dit_folder, tmp_path / "afile" / "sub"], capsys, "DST", "is a file")
    _refused(convert_main, [dit_folder, dit_folder, "--overwrite"], capsys, "is SRC")
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    _refused(convert_main, [dit_folder, full], capsys, "not empty", "--overwrite")
    assert os.listdir(full) == ["notes.txt"] and (tmp_path / "afile").read_text() == "x"


def test_convert_writes_a_new_folder_and_overwrites_only_its_own_files(dit_folder, tmp_path, capsys):
    from unigen.pretrained import from_pretrained

    dst = tmp_path / "dst"
    assert convert_main([str(dit_folder), str(dst)]) == 0
    assert sorted(os.listdir(dst)) == ["params", "unigen_config.json"]
    _refused(convert_main, [dit_folder, dst], capsys, "not empty")  # converting again needs --overwrite
    (dst / "notes.txt").write_text("mine")
    assert convert_main([str(dit_folder), str(dst), "--overwrite"]) == 0
    assert sorted(os.listdir(dst)) == ["notes.txt", "params", "unigen_config.json"]
    assert (dst / "notes.txt").read_text() == "mine"
    assert from_pretrained(str(dst)).cfg == from_pretrained(str(dit_folder)).cfg


def _cli(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=dict(os.environ, PYTHONUNBUFFERED="1", PYTHONSAFEPATH="1"))


def test_real_entry_points(workdir, dit_folder, tmp_path):
    """The installed scripts print the same one line (no usage block, no traceback) and exit with 2."""
    before = _md5s(workdir)
    (tmp_path / "out.json").mkdir()
    for args, expect in [
            ([os.path.join(ROOT, "infer", "sample.py"), "--workdir", workdir, "--out", tmp_path / "s.npz",
              "--cfg-scale", "nan"], "--cfg-scale"),
            ([os.path.join(ROOT, "infer", "evaluate.py"), "--samples", tmp_path / "none.npz", "--json",
              tmp_path / "out.json"], "--json"),
            (["-m", "unigen.convert", dit_folder, workdir], "training work dir")]:
        out = _cli(*map(str, args))
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) <= 3 and "Traceback" not in out.stderr, out.stderr
        assert lines[-1].startswith("error: ") and expect in lines[-1], out.stderr
    assert _md5s(workdir) == before and os.listdir(tmp_path) == ["out.json"]


@pytest.mark.parametrize("field,value,named", [("sample.cfg_scale", float("inf"), "config.sample.cfg_scale=inf"),
                                               ("train.lr", float("nan"), "config.train.lr=nan"),
                                               ("train.lr_multipliers", (("^blocks", float("inf")),),
                                                "config.train.lr_multipliers[0][1]=inf")])
def test_config_floats_must_be_finite(field, value, named):
    """The trainer's config check refuses NaN / inf in any float field, nested ones too (config_flags
    reads `--config.sample.cfg_scale=inf` as a float and inf passes `>= 0`)."""
    from unigen.errors import ConfigError
    from unigen.training.build import validate
    from unigen.training.config import apply_override, load_config_file

    cfg = load_config_file(CONFIG)
    apply_override(cfg, field, value)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert str(e.value).startswith(named) and "finite" in str(e.value)


def test_output_checks_create_nothing(tmp_path):
    """check_output_folder (a DiT pipeline's FILE_images/) and check_output_file leave no trace:
    a missing folder is probed in its nearest existing parent, not created."""
    from unigen.errors import ConfigError
    from unigen.cli_args import check_output_file, check_output_folder

    (tmp_path / "s_images").write_text("x")
    with pytest.raises(ConfigError, match="s_images is a file"):
        check_output_folder(str(tmp_path / "s_images"), "--out (its _images/ folder)")
    check_output_folder(str(tmp_path / "a" / "b"), "DST")
    check_output_file(str(tmp_path / "c" / "s.npz"), "--out")
    assert os.listdir(tmp_path) == ["s_images"]


def test_train_main_reads_overrides_from_its_argv(monkeypatch):
    # ml_collections reads `--config.x=` overrides from sys.argv by default; an in-process call
    # (a notebook, a test) passes its own command line.
    from unigen.training.cli import parse_flags
    monkeypatch.setattr(sys, "argv", ["python"])
    cfg, fv = parse_flags(["--config", os.path.join(ROOT, "configs", "dit_digits.py"), "--workdir", "w",
                           "--config.train.steps=7"])
    assert cfg.train.steps == 7 and fv.workdir == "w"
