"""A work dir survives its users (issue 34): one training at a time (a lock a killed run does not
leave behind), one metrics row per step whatever was resumed or killed, a full disk said in one
line, no work dir left behind by a run that failed before it could train, damaged checkpoints and
frozen parts handled the same way by the trainer and the sampler. Each case runs the real
commands (train/train.py, infer/sample.py) as subprocesses: an expected failure exits with
status 2 and at most 3 lines on stderr, one `error:` line, no traceback, and leaves every file
of the work dir byte for byte as it was."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from test_reliability import CONFIG, ROOT, TINY, _cli, _losses, _train

EVERY_2 = ["--config.train.checkpoint_every=2", "--config.train.keep_checkpoints=3"]


def _md5s(folder):
    return {os.path.relpath(os.path.join(d, f), folder): hashlib.md5(open(os.path.join(d, f), "rb").read()).hexdigest()
            for d, _, files in os.walk(folder) for f in files}


def _said(stderr):
    """The lines of stderr a person reads: without the progress bars (tqdm's 'sample:  40%|...') and blanks."""
    return [line for line in stderr.splitlines() if line.strip() and not re.match(r"^[\w ]+:\s*\d+%\|", line.strip())]


def _refused(out, *needles, max_lines=3):
    """An expected failure: status 2, no traceback, at most `max_lines` lines, one `error:` line holding `needles`."""
    lines = _said(out.stderr)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and len(lines) <= max_lines, out.stderr[-3000:]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and all(n in errors[0] for n in needles), (needles, out.stderr[-3000:])
    return errors[0]


def _steps(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f]


def _start(workdir, *args):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train", "train.py"), "--config", CONFIG,
                             "--workdir", str(workdir), *TINY, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _wait_for_rows(proc, workdir, rows, timeout=300):
    """Wait until `proc` logged at least `rows` metrics rows (it still runs)."""
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if os.path.exists(path):
            with open(path) as f:
                if sum(1 for _ in f) >= rows:
                    return
        time.sleep(0.01)
    raise AssertionError(f"no {rows} metrics rows in {timeout} s")


# ---- class 5: one training per work dir; metrics; a full disk ------------------------------------

def test_a_second_training_is_refused_at_once_and_a_killed_one_leaves_no_lock(tmp_path):
    work = tmp_path / "w"
    steps = ["--config.train.steps=300", "--config.train.checkpoint_every=50"]
    first = _start(work, *steps)
    try:
        _wait_for_rows(first, work, 60)
        os.kill(first.pid, signal.SIGSTOP)  # frozen mid-run, holding the lock: the second meets it for sure
        second = _train(work, *steps)
        assert first.poll() is None  # refused while the first still holds the work dir
        line = _refused(second, f"{work} is in use by another training (PID {first.pid} on", "train.lock")
        assert "--workdir" in line
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    assert _steps(work) == list(range(1, 301))  # one row per step: the refused run wrote nothing
    # A killed holder leaves the lock file, not the lock: the next run resumes, and its metrics hold
    # one row per step (the rows the killed run logged after its last checkpoint are replaced).
    longer = ["--config.train.steps=600", "--config.train.checkpoint_every=50"]
    killed = _start(work, *longer)
    _wait_for_rows(killed, work, 420)
    killed.kill()
    killed.communicate()
    assert open(work / "train.lock").read().startswith(f"PID {killed.pid} on")  # what it left: a name, no lock
    rerun = _train(work, *longer)
    assert rerun.returncode == 0 and "in use" not in rerun.stderr, rerun.stderr[-3000:]
    assert _steps(work) == list(range(1, 601))


def test_metrics_log_keeps_one_row_per_step_on_resume(tmp_path):
    """A metrics.jsonl with every step twice (two runs that shared a work dir before it was locked),
    rows past the checkpoint and a line cut by a kill: the resumed log holds steps 1..resume once, in order."""
    from unigen.training.metrics import MetricsLog
    rows = [{"step": s, "loss": float(s) + copy} for copy in (0.0, 0.5) for s in range(1, 7)]
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
        f.write('{"step": 7, "lo')
    log = MetricsLog(str(tmp_path), resume_step=4)
    log.write({"step": 5, "loss": 9.0})
    log.close()
    again = MetricsLog(str(tmp_path), resume_step=5)  # a later resume: still one row per step
    again.close()
    kept = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in kept] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in kept] == [1.5, 2.5, 3.5, 4.5, 9.0]  # the row written last wins
    assert MetricsLog.last_logged_step(str(tmp_path)) == 5


def _train_with(patch, workdir, *args, cwd):
    """train/train.py's main in a fresh process after running `patch` (Python source) in it: a fake of
    the file system (a full disk) without filling one."""
    code = ("import sys\n" + patch + "\nfrom unigen.training.cli import main\n"
            "raise SystemExit(main(sys.argv[1:]))\n")
    return subprocess.run([sys.executable, "-c", code, "--config", CONFIG, "--workdir", str(workdir), *TINY, *args],
                          capture_output=True, text=True, timeout=600, cwd=str(cwd),
                          env=dict(os.environ, PYTHONUNBUFFERED="1", PYTHONSAFEPATH="1"))


FULL_DISK = {
    # statvfs says 1000 bytes are free: the first checkpoint is refused before orbax writes
    "checked": ("import unigen.training.disk as disk\ndisk.free_bytes = lambda path: 1000",
                "/checkpoints: it needs about", "1.0 KB free"),
    # the space is there when checked, but orbax's write fails (tensorstore's error text for ENOSPC)
    "orbax": ("import orbax.checkpoint as ocp\n"
              "def save(self, *a, **k):\n"
              "    raise ValueError('RESOURCE_EXHAUSTED: Error writing local file \"x/_sharding\": Failed to write "
              "400 bytes to file 18: No space left on device [os_error_code=\\'28\\']')\n"
              "ocp.CheckpointManager.save = save", "/checkpoints: it needs about", "free"),
    # appending a metrics row fails
    "metrics": ("import builtins, errno, unigen.training.metrics as m\n"
                "def full(path, mode='r', *a, **k):\n"
                "    if 'a' in mode:\n"
                "        raise OSError(errno.ENOSPC, 'No space left on device', path)\n"
                "    return builtins.open(path, mode, *a, **k)\n"
                "m.open = full", "/metrics.jsonl: it needs about", "free"),
}


@pytest.mark.parametrize("where", sorted(FULL_DISK))
def test_a_full_disk_is_one_line_and_the_run_resumes(tmp_path, where):
    patch, *needles = FULL_DISK[where]
    work = tmp_path / "w"
    out = _train_with(patch, work, "--config.train.steps=2", cwd=tmp_path)
    line = _refused(out, f"no space left on the disk of {work}", *needles)
    assert "then rerun" in line or where == "metrics"
    if where == "checked":  # nothing half-written: the same command, with space, trains (and says it starts again)
        rerun = _train(work, "--config.train.steps=2")
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert "holds no checkpoint, but metrics.jsonl logs steps up to 2: training again from step 0" in rerun.stderr
        assert _steps(work) == [1, 2]


# ---- class 2: validate, then write -----------------------------------------------------------------

def test_a_failed_first_run_leaves_no_work_dir_to_trap_the_rerun(tmp_path):
    new, empty = tmp_path / "new", tmp_path / "empty"
    empty.mkdir()
    # The data set: its message is the data loader's own (several lines: how to prepare it).
    for work in (new, empty):
        out = _train(work, "--config.train.steps=2", "--config.data.name=nosuchdata")
        _refused(out, "TFDS data set 'nosuchdata' is not prepared")
    assert not new.exists() and os.listdir(empty) == []
    out = _train(new, "--config.train.steps=2", f"--config.init_from={tmp_path / 'nothing'}")
    _refused(out, str(tmp_path / "nothing"))
    out = _train(new, "--config.train.steps=2", "--config.eval.at_end=True", "--config.eval.num_samples=0")
    _refused(out, "config.eval.num_samples=0")
    assert not new.exists()
    rerun = _train(new, "--config.train.steps=2")  # the corrected run trains
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _steps(new) == [1, 2]


def test_a_missing_config_file_or_a_work_dir_under_a_file_is_one_line(tmp_path):
    out = _cli("train/train.py", "--config", str(tmp_path / "nothing.py"), "--workdir", str(tmp_path / "w"))
    _refused(out, f"--config {tmp_path / 'nothing.py'}: no such file")
    assert not (tmp_path / "w").exists()
    (tmp_path / "file").write_text("x")
    out = _train(tmp_path / "file" / "w", "--config.train.steps=2")
    _refused(out, f"--workdir {tmp_path / 'file' / 'w'}: {tmp_path / 'file'} is a file")


# ---- class 6: damaged checkpoints and frozen parts, read by the sampler ------------------------------

def _damage(folder):
    """Truncate the largest file under `folder` (an array's data: the metadata stays readable)."""
    files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(os.path.getsize(largest) // 3)


def _sample(workdir, out, *args):
    return _cli("infer/sample.py", "--workdir", str(workdir), "--out", str(out), "--per-class", "1",
                "--steps", "2", *args)


def test_sampling_falls_back_from_a_damaged_checkpoint_and_changes_nothing(tmp_path):
    work = tmp_path / "w"
    assert _train(work, "--config.train.steps=4", *EVERY_2).returncode == 0
    _damage(work / "checkpoints" / "4")
    before = _md5s(work)
    out = _sample(work, tmp_path / "s.npz")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = _said(out.stderr)
    assert len(lines) == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert f"checkpoint {work}/checkpoints/4 cannot be read" in lines[0] and "left it in place" in lines[0]
    assert lines[1] == "warning: using step 2, the newest readable checkpoint"
    assert _md5s(work) == before  # a reader moves nothing (a training may be running there)
    _damage(work / "checkpoints" / "2")
    before = _md5s(work)
    out = _sample(work, tmp_path / "s2.npz")
    line = _refused(out, f"no checkpoint in {work}/checkpoints can be read (steps 4, 2")
    assert "using step" not in out.stderr and "resuming" not in out.stderr and "ERROR" not in out.stderr, line
    assert _md5s(work) == before and not (tmp_path / "s2.npz").exists()
    # Checkpoints gone, metrics left: the sampler and the trainer say so.
    for step in ("2", "4"):
        import shutil
        shutil.rmtree(work / "checkpoints" / step)
    out = _sample(work, tmp_path / "s3.npz")
    _refused(out, "has no checkpoint yet although its metrics.jsonl logs steps up to 4")


def test_damaged_frozen_parts_are_rebuilt_by_sampler_and_trainer(tmp_path):
    frozen = ["--config.train.frozen=('x_embedder/',)", *EVERY_2]
    work, whole = tmp_path / "w", tmp_path / "whole"
    assert _train(work, "--config.train.steps=2", *frozen).returncode == 0
    assert _sample(work, tmp_path / "a.npz").returncode == 0
    _damage(work / "frozen")
    before = _md5s(work)
    out = _sample(work, tmp_path / "b.npz")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = _said(out.stderr)
    assert len(lines) == 1 and f"the frozen parts in {work}/frozen cannot be read" in lines[0], out.stderr
    assert "built them again from the config for this run" in lines[0]
    assert _md5s(work) == before
    np.testing.assert_array_equal(np.load(tmp_path / "a.npz")["images"], np.load(tmp_path / "b.npz")["images"])
    # The trainer moves the damaged folder aside, writes the parts again and resumes exactly.
    out = _train(work, "--config.train.steps=4", *frozen)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = _said(out.stderr)
    assert len(lines) == 1 and f"moved it to {work}/damaged_checkpoints/frozen-" in lines[0], out.stderr
    assert _train(whole, "--config.train.steps=4", *frozen).returncode == 0
    assert _losses(work) == _losses(whole)
    again = _sample(work, tmp_path / "c.npz")
    assert again.returncode == 0 and _said(again.stderr) == [], again.stderr
    # Parts that came from a file that is gone cannot be built again: one line naming both.
    child = tmp_path / "child"
    assert _train(child, "--config.train.steps=2", *frozen, f"--config.init_from={work}").returncode == 0
    _damage(child / "frozen")
    os.rename(work, tmp_path / "moved")
    before = _md5s(child)
    out = _sample(child, tmp_path / "d.npz")
    _refused(out, f"{child}/frozen", "cannot be built again from its config", str(work))
    assert _md5s(child) == before
