"""unigen.parallel: meshes, rule tables, sharded training and restore onto other meshes.

Fake CPU devices (`--xla_force_host_platform_device_count`) must be set before jax is
imported, so the multi-device checks run in subprocesses (tests/parallel_checks.py)
that print a JSON result; the pure-Python parts run here on the one CPU device.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from unigen import parallel as par

from fake_devices import fake_devices_env

CHECKS = Path(__file__).with_name("parallel_checks.py")
ROOT = CHECKS.parent.parent
RUNS = [
    ("dp", {"data": 2, "fsdp": 4}),
    ("fsdp", {"fsdp": 8}),
    ("fsdp_tp", {"data": 2, "fsdp": 2, "tensor": 2}),
    ("cp", {"fsdp": 2, "context": 4}),
]


def run_checks(devices: int, *args: str, timeout: int = 600) -> dict:
    env = fake_devices_env(devices, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(CHECKS), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(lines[-1][len("RESULT "):])


# ---------------------------------------------------------------- sharded training


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One subprocess on 8 fake devices: a single-device reference run and one run per
    preset (3 AdamW steps of a tiny scanned DiT); the fsdp run is checkpointed."""
    ckpt = tmp_path_factory.mktemp("ckpt")
    return run_checks(8, "train", json.dumps(RUNS), str(ckpt)), ckpt


@pytest.mark.parametrize("preset", [p for p, _ in RUNS])
def test_sharded_training_matches_single_device(trained, preset):
    result, _ = trained
    run = result[preset]
    assert run["num_devices"] == 8
    np.testing.assert_allclose(run["losses"], result["ref_losses"], rtol=1e-5)
    # Whole-state relative L2 and the worst leaf (see parallel_checks.compare for why L2).
    assert run["diff"]["global"] < 1e-5, run["diff"]
    assert run["diff"]["worst_leaf"] < 1e-4, run["diff"]
    assert run["diff"]["int_mismatch"] == [], run["diff"]
    assert run["unmatched"] == []  # every DiT param carries logical_axes


# The stacked (scan) params have a leading `layers` axis that is never sharded.
EXPECTED = {
    # (layers, embed, mlp)
    "mlp/fc1/kernel": {"dp": [], "fsdp": [None, "fsdp"], "fsdp_tp": [None, "fsdp", "tensor"],
                       "cp": [None, ["fsdp", "context"]]},
    # (layers, embed, 3, heads, kv)
    "qkv/kernel": {"dp": [], "fsdp": [None, "fsdp"], "fsdp_tp": [None, "fsdp", None, "tensor"],
                   "cp": [None, ["fsdp", "context"]]},
    # (layers, heads, kv, embed): heads=4 cannot split 8 ways, so fsdp falls to embed
    "proj/kernel": {"dp": [], "fsdp": [None, None, None, "fsdp"],
                    "fsdp_tp": [None, "tensor", None, "fsdp"],
                    "cp": [None, None, None, ["fsdp", "context"]]},
}


@pytest.mark.parametrize("preset", [p for p, _ in RUNS])
def test_state_is_sharded_as_the_rules_say(trained, preset):
    specs = trained[0][preset]["specs"]
    for leaf, by_preset in EXPECTED.items():
        for tree in ("params", "ema", "opt_state/0/mu", "opt_state/0/nu"):
            assert specs[f"{tree}/blocks/{leaf}/value"] == by_preset[preset], (tree, leaf)
    assert specs["opt_state/0/count"] == [] and specs["step"] == [] and specs["rng"] == []


def test_collectives_follow_the_preset(trained):
    result, _ = trained
    colls = {p: result[p]["collectives"] for p, _ in RUNS}
    # Pure data parallel needs no parameter all-gathers; ZeRO-3 gathers its weights.
    assert colls["dp"]["all-gather"]["count"] == 0
    assert colls["dp"]["all-reduce"]["count"] > 0
    assert colls["fsdp"]["all-gather"]["count"] > 0
    # fsdp stores each weight 8-way split: its gathers move 1/8-size shards.
    assert colls["fsdp"]["all-gather"]["bytes"] * 4 < colls["dp"]["all-reduce"]["bytes"]


@pytest.mark.parametrize("devices,mesh", [(4, {"data": 2, "fsdp": 2}), (1, {})])
def test_restore_onto_another_mesh(trained, devices, mesh):
    _, ckpt = trained
    out = run_checks(devices, "restore", str(ckpt), "fsdp", json.dumps(mesh))
    assert out["num_devices"] == devices
    assert out["all_equal"], out["mismatched"]
    expected = [None, "fsdp"] if devices > 1 else []
    assert out["specs"]["params/blocks/mlp/fc1/kernel/value"] == expected
    assert out["specs"]["opt_state/0/mu/blocks/mlp/fc1/kernel/value"] == expected


# ---------------------------------------------------------------- meshes (1 device)


def test_mesh_shapes_and_errors():
    mesh = par.make_mesh({"data": -1})
    assert mesh.axis_names == par.MESH_AXES and mesh.devices.size == jax.device_count()
    assert par.resolve_mesh_shape({"fsdp": -1, "tensor": 2}, 8) == {
        "data": 1, "fsdp": 4, "tensor": 2, "context": 1}

    class Cfg:  # a config object with the four fields
        data, fsdp, tensor, context = 2, 2, 1, 2

    assert par.resolve_mesh_shape(Cfg(), 8) == {"data": 2, "fsdp": 2, "tensor": 1, "context": 2}
    with pytest.raises(ValueError, match=r"needs 6 devices but 8 are available"):
        par.resolve_mesh_shape({"data": 3, "fsdp": 2}, 8)
    with pytest.raises(ValueError, match=r"8 devices are not divisible by the product 3"):
        par.resolve_mesh_shape({"data": -1, "tensor": 3}, 8)
    with pytest.raises(ValueError, match="at most one"):
        par.resolve_mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="unknown mesh axes"):
        par.resolve_mesh_shape({"model": 2}, 8)
    with pytest.raises(ValueError, match=f"{jax.device_count()} are available"):
        par.make_mesh({"data": jax.device_count() + 1})


def test_rule_tables_and_specs():
    mesh = jax.sharding.AbstractMesh((2, 4, 2, 2), par.MESH_AXES)
    fsdp_tp = par.get_rules("fsdp_tp")
    # Activations: batch claims fsdp first, so embed stays whole.
    assert par.logical_to_spec(("batch", "length", "embed"), fsdp_tp, mesh) == P(("data", "fsdp"), None, None)
    assert par.logical_to_spec(("batch", "length", "heads", "kv"), fsdp_tp, mesh) == P(("data", "fsdp"), None, "tensor", None)
    assert par.logical_to_spec(("batch", "length", "embed"), "cp", mesh) == P(("data", "fsdp"), "context", None)
    # Params.
    assert par.logical_to_spec(("embed", "mlp"), fsdp_tp, mesh) == P("fsdp", "tensor")
    assert par.logical_to_spec(("mlp", "embed"), "fsdp", mesh) == P("fsdp", None)
    assert par.logical_to_spec(("embed", "mlp"), "dp", mesh) == P(None, None)
    # Divisibility: 6 heads cannot split over fsdp=4; fsdp moves on to embed.
    spec, problems = par.spec_for_shape((6, 8, 64), ("heads", "kv", "embed"), "fsdp", mesh)
    assert spec == P(None, None, "fsdp") and problems == []
    spec, problems = par.spec_for_shape((6, 8), ("heads", "kv"), "fsdp", mesh)
    assert spec == P(None, None) and "not divisible" in problems[0]
    # DiT-XL under cp on fsdp=64 x context=4: 1152 cannot split 256 ways; the longest
    # dividing prefix (fsdp) is kept, and the report says so.
    big = jax.sharding.AbstractMesh((1, 64, 1, 4), par.MESH_AXES)
    spec, problems = par.spec_for_shape((16, 72, 1152), ("heads", "kv", "embed"), "cp", big)
    assert spec == P(None, None, "fsdp") and "split over ('fsdp',) only" in problems[1]
    assert par.spec_for_shape((1152, 4608), ("embed", "mlp"), "cp", big)[0] == P(None, ("fsdp", "context"))
    with pytest.raises(ValueError, match="unknown sharding preset"):
        par.get_rules("zero3")
    with pytest.raises(ValueError, match="does not have"):
        par.spec_for_shape((4,), ("embed",), [("embed", "model")], mesh)


class _Tiny(nnx.Module):
    def __init__(self, rngs):
        init = nnx.initializers.lecun_normal()
        self.w = nnx.Param(init(rngs.params(), (16, 64)), logical_axes=("embed", "mlp"))
        self.b = nnx.Param(jnp.zeros((64,)), logical_axes=("mlp",))
        self.legacy = nnx.Param(jnp.zeros((64, 16)))  # no metadata: regex or report
        self.stray = nnx.Param(jnp.zeros((3, 5)))


def test_tree_shardings_metadata_regex_suffix_and_report(caplog):
    mesh = jax.sharding.AbstractMesh((1, 4, 2, 1), par.MESH_AXES)
    _, params = nnx.split(nnx.eval_shape(lambda: _Tiny(nnx.Rngs(0))), nnx.Param)
    regex = [(r"legacy$", ("mlp", "embed"))]
    with caplog.at_level(logging.WARNING, logger="unigen.parallel"):
        sh, report = par.plan_shardings(params, mesh, "fsdp_tp", regex)
    assert sh["w"].get_value().spec == P("fsdp", "tensor")
    assert sh["b"].get_value().spec == P("tensor")
    assert sh["legacy"].get_value().spec == P("tensor", "fsdp")
    assert sh["stray"].get_value().spec == P()
    assert report.unmatched == ["stray[3, 5]"]
    assert sum("stray" in r.message for r in caplog.records) == 1

    # Optimizer moments of a *pure dict* of arrays have no metadata: they inherit the
    # param sharding by path suffix and shape; counts and keys are replicated.
    pure = nnx.to_pure_dict(params)
    opt = jax.eval_shape(optax.adamw(1e-3).init, pure)
    state = {"params": params, "opt": opt, "step": jax.ShapeDtypeStruct((), jnp.int32),
             "rng": jax.eval_shape(lambda: jax.random.key(0))}
    sh = par.train_state_shardings(state, mesh, "fsdp_tp", regex)
    assert sh["opt"][0].mu["w"].spec == P("fsdp", "tensor")
    assert sh["opt"][0].nu["b"].spec == P("tensor")
    assert sh["opt"][0].count.spec == P() and sh["step"].spec == P() and sh["rng"].spec == P()
    # Per-device bytes: w (16x64 f32) split 8 ways, b split 2 ways, the rest whole.
    assert par.bytes_per_device(params, par.state_shardings(params, mesh, "fsdp_tp", regex)) == (
        16 * 64 * 4 // 8 + 64 * 4 // 2 + 64 * 16 * 4 // 8 + 15 * 4)


def test_stacked_layers_axis_and_rank_errors():
    mesh = jax.sharding.AbstractMesh((1, 2, 1, 1), par.MESH_AXES)
    stacked = nnx.State({"k": nnx.Param(jax.ShapeDtypeStruct((3, 4, 8), jnp.float32),
                                        logical_axes=("embed", "mlp"))})
    assert par.state_shardings(stacked, mesh, "fsdp")["k"].get_value().spec == P(None, "fsdp", None)
    bad = nnx.State({"k": nnx.Param(jax.ShapeDtypeStruct((8,), jnp.float32),
                                    logical_axes=("embed", "mlp"))})
    with pytest.raises(ValueError, match="do not fit shape"):
        par.state_shardings(bad, mesh, "fsdp")


def test_constrain_is_identity_without_rules_and_shards_with_them():
    x = jnp.ones((4, 6, 8))
    assert par.constrain(x, ("batch", "length", "embed")) is x
    mesh = par.make_mesh({})
    with par.use_rules(mesh, "fsdp"):
        y = jax.jit(lambda a: par.constrain(a, ("batch", "length", "embed")) * 2)(x)
    np.testing.assert_array_equal(y, 2 * x)
    with par.use_rules(mesh, "fsdp"), pytest.raises(ValueError, match="rank 3"):
        par.constrain(x, ("batch", "embed"))


def test_put_batch_single_process():
    mesh = par.make_mesh({})
    batch = par.put_batch({"x": np.arange(12.0).reshape(4, 3)}, mesh, "dp")
    np.testing.assert_array_equal(np.asarray(batch["x"]), np.arange(12.0).reshape(4, 3))
    assert par.process_shard_info() == (0, 1)
    assert par.loader_shard_info(mesh, "dp") == (0, 1)
    assert par.local_batch_size(4, mesh, "dp") == 4
    with pytest.raises(ValueError, match="scalar"):
        par.put_batch({"x": np.float32(1)}, mesh, "dp")


def test_collective_stats_counts_scan_iterations():
    hlo = """HloModule m

%body (p: (s32[], f32[2,16])) -> (s32[], f32[2,16]) {
  %p = (s32[], f32[2,16]) parameter(0)
  %x = f32[2,16]{1,0} get-tuple-element(%p), index=1
  %ag = f32[16,16]{1,0} all-gather(%x), channel_id=1, dimensions={0}
  ROOT %t = (s32[], f32[2,16]) tuple(%i, %x)
}

ENTRY %main (a: f32[2,16], g: f32[16,16]) -> f32[16,16] {
  %w = (s32[], f32[2,16]) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"28"}}
  ROOT %ar = f32[16,16]{1,0} all-reduce(%g), channel_id=2, to_apply=%add
}
"""
    stats = par.collective_stats(hlo)
    assert stats["all-gather"] == {"count": 28, "bytes": 28 * 2 * 16 * 4, "result_bytes": 28 * 16 * 16 * 4}
    assert stats["all-reduce"]["bytes"] == 16 * 16 * 4
    assert stats["total_bytes"] == 28 * 128 + 1024


def test_initialize_is_a_noop_for_one_process(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                 "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert par.initialize() == (0, 1)
    assert not par.is_initialized()
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match="give all three"):
        par.initialize()


def test_generator_samples_the_same_over_a_sharded_mesh():
    result = run_checks(8, "generate")
    assert result["devices"] == 8 and result["shape"] == [12, 8, 8, 4]
    assert result["max_diff"] <= 1e-4 * result["scale"], result
