"""Two JAX processes on localhost (gloo CPU collectives, 4 fake devices each) train on
one 8-device fsdp mesh, each feeding its own half of every batch through
`make_array_from_process_local_data`, and end where a single-device run ends."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fake_devices import fake_devices_env

CHECKS = Path(__file__).with_name("parallel_checks.py")
ROOT = CHECKS.parent.parent
TIMEOUT = 420  # a hung collective must fail the test, not block CI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(devices: int) -> dict:
    return fake_devices_env(devices, JAX_PLATFORMS="cpu")


def result_of(stdout: str) -> dict:
    lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
    assert lines, stdout[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_two_processes_match_single_process(tmp_path):
    port, mesh = free_port(), json.dumps({"fsdp": 8})
    out = tmp_path / "multi.npz"
    procs = [
        subprocess.Popen(
            [sys.executable, str(CHECKS), "multiprocess", str(port), str(i), "fsdp", mesh, str(out)],
            env=env(4), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outputs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=TIMEOUT)
            assert p.returncode == 0, stdout[-2000:] + stderr[-4000:]
            outputs.append(result_of(stdout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()

    ref = subprocess.run([sys.executable, str(CHECKS), "reference", str(tmp_path / "ref.npz")],
                         env=env(1), cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert ref.returncode == 0, ref.stderr[-4000:]
    ref_losses = result_of(ref.stdout)["losses"]

    for i, o in enumerate(outputs):
        assert (o["process_index"], o["process_count"]) == (i, 2)
        assert (o["device_count"], o["local_device_count"]) == (8, 4)
        assert o["shard"] == [i, 2]  # each process loads its own half of the batch
        assert o["specs"]["params/blocks/mlp/fc1/kernel/value"] == [None, "fsdp"]
        np.testing.assert_allclose(o["losses"], ref_losses, rtol=1e-5)

    got, want = np.load(out), np.load(tmp_path / "ref.npz")
    assert sorted(got.files) == sorted(want.files)
    num = den = 0.0
    for k in want.files:
        if np.issubdtype(want[k].dtype, np.floating):
            num += float(np.sum((got[k].astype(np.float64) - want[k]) ** 2))
            den += float(np.sum(want[k].astype(np.float64) ** 2))
        else:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert (num / den) ** 0.5 < 1e-5
