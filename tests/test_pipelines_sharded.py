"""The SD3 and Flux pipelines over 8 fake CPU devices with the "fsdp" rules give the images of one device.

Fake devices (`--xla_force_host_platform_device_count`) must be asked for before jax is imported,
so the check runs this file as a script in a subprocess (as tests/test_parallel.py runs
tests/parallel_checks.py) and reads one "RESULT {json}" line. The tiny random pipeline folders are
built here, with test_sd3_pipeline's `folders` fixture and test_flux_pipeline's `build_pipeline`.
In the subprocess each folder is loaded twice, on one device and over 8 devices, and called with
the same initial latents:
  * SD3 with mesh={"fsdp": -1} in from_pretrained and the "fsdp" rules plus conv_out -> fsdp (the
    preset names no conv axis, so under it alone the VAE is stored whole): 8 prompts with guidance,
    the batch split everywhere (8 encoder rows, 8 latents, 16 guided rows);
  * Flux (dev-like) through `shard(Mesh)` with the "fsdp" preset: 3 prompts, a batch the 8 devices
    do not divide, so whole on every device;
the images agree to 1e-5 absolute, every network the rules name has parameters stored split over
more than one device (the rest whole on all 8), and the images come back whole on every device.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fake_devices import fake_devices_env
from test_flux_pipeline import build_pipeline, tokenizers  # noqa: F401  (tokenizers: a fixture, used below)
from test_sd3_pipeline import folders  # noqa: F401  (the tiny SD3 folders fixture)

pytestmark = [pytest.mark.filterwarnings("ignore:prompt .* longer than the T5 limit"),
              pytest.mark.filterwarnings("ignore:prompt .* CLIP tokens long")]
DEVICES = 8
ATOL = 1e-5
SD3_SIZE = (16, 24)   # pixels: the VAE's factor 2 x patch 2 divides both; latents 8 x 12
FLUX_SIZE = (12, 20)  # pixels: latents 6 x 10, 3 x 5 tokens
PROMPTS = ["a photo of a cat", "the quick brown fox", "an astronaut riding a horse", "a city at night",
           "a bowl of fruit", "mountains and a lake", "portrait of a woman", "blurry, low quality"]


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory, tokenizers):  # noqa: F811
    return build_pipeline(str(tmp_path_factory.mktemp("flux_sharded")), tokenizers, dev=True, seed=0)[1]


def test_sharded_pipelines_match_one_device(folders, flux_folder):  # noqa: F811
    env = fake_devices_env(DEVICES, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, __file__, folders[1], flux_folder], env=env, capture_output=True,
                          text=True, timeout=600, cwd=Path(__file__).parent.parent)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["devices"] == DEVICES
    for case, run in result["runs"].items():
        assert run["shape"][0] == run["batch"], (case, run)
        assert run["max_abs_diff"] <= ATOL, (case, run)
        assert run["spread"] > 0.05, (case, run)  # the images are not blank: the comparison means something
        assert run["replicated"], (case, run)     # gathered: whole on every device
    for pipeline, networks in result["sharded"].items():
        for name, count in networks.items():
            assert count["on_mesh"], (pipeline, name, count)  # every parameter on the 8 devices
            if (pipeline, name) != ("flux", "vae"):  # "fsdp" alone names no conv axis: Flux's VAE is whole
                assert count["split"] > 0, (pipeline, name, count)  # some parameter stored over > 1 device
        assert sum(c["split"] for c in networks.values()) > sum(c["whole"] for c in networks.values()) / 4, networks
    assert result["batch_split"], result  # a divisible batch really went split into the compiled call


def test_placement_arguments():
    from unigen.errors import ConfigError
    from unigen.pipelines.components import Placement

    assert Placement.of(None) == Placement() and not Placement().sharded and Placement().batch_ways() == 1
    with pytest.raises(ConfigError, match="rules='zero3'"):
        Placement.of({"fsdp": 1}, "zero3")
    one = Placement.of({"fsdp": -1}, "fsdp")
    assert one.sharded and one.batch_ways() == 1 and np.asarray(one.batch(np.ones((3, 2)))).shape == (3, 2)


# ---- the subprocess side ---------------------------------------------------------------------------------
def _sharding_counts(pipe) -> dict:
    """{network: {"split": params stored over > 1 device, "whole": the rest}}."""
    import jax
    from flax import nnx

    out = {}
    for name, module in pipe.networks().items():
        if module is None:
            continue
        arrays = [a for a in jax.tree.leaves(nnx.state(module, nnx.Param)) if isinstance(a, jax.Array)]
        split = sum(1 for a in arrays if not a.sharding.is_fully_replicated and len(a.sharding.device_set) > 1)
        out[name] = {"split": split, "whole": len(arrays) - split,
                     "on_mesh": all(len(a.sharding.device_set) == DEVICES for a in arrays)}
    return out


def _compare(single, sharded, latents, **kwargs) -> dict:
    """Both pipelines' images; whether the sharded one's came back whole on every device (seen at
    `to_output`, which every pipeline hands its compiled result to)."""
    import unigen.pipelines.flux as flux_module
    import unigen.pipelines.sd3 as sd3_module
    from unigen.pipelines.components import to_output

    want = single(latents=latents, output_type="np", **kwargs)
    seen = []
    flux_module.to_output = sd3_module.to_output = lambda out, kind: (seen.append(out.sharding),
                                                                      to_output(out, kind))[1]
    try:
        got = sharded(latents=latents, output_type="np", **kwargs)
    finally:
        flux_module.to_output = sd3_module.to_output = to_output
    return {"batch": int(latents.shape[0]), "shape": list(got.shape),
            "max_abs_diff": float(np.abs(got - want).max()), "spread": float(want.std()),
            "replicated": len(seen) == 1 and seen[0].is_fully_replicated and len(seen[0].device_set) == DEVICES}


def main(sd3_folder: str, flux_folder: str) -> None:
    import warnings

    import jax

    from unigen.parallel import PRESETS, make_mesh
    from unigen.pipelines.flux import FluxPipeline
    from unigen.pipelines.sd3 import StableDiffusion3Pipeline

    warnings.filterwarnings("ignore", message="prompt .*")
    rng = np.random.default_rng(0)
    mesh = {"fsdp": -1}
    result = {"devices": len(jax.devices()), "runs": {}, "sharded": {}}

    sd3_one = StableDiffusion3Pipeline.from_pretrained(sd3_folder)
    rules = PRESETS["fsdp"] + (("conv_out", "fsdp"),)  # the VAE's convolutions split too
    sd3 = StableDiffusion3Pipeline.from_pretrained(sd3_folder, mesh=mesh, rules=rules)
    result["sharded"]["sd3"] = _sharding_counts(sd3)
    h, w = SD3_SIZE
    latents = rng.standard_normal((8, h // 2, w // 2, 16)).astype(np.float32)
    result["runs"]["sd3_guided_8"] = _compare(sd3_one, sd3, latents, prompt=PROMPTS, height=h, width=w,
                                              num_inference_steps=2, guidance_scale=4.0, max_sequence_length=12)

    flux_one = FluxPipeline.from_pretrained(flux_folder)
    flux = FluxPipeline.from_pretrained(flux_folder).shard(make_mesh({"fsdp": DEVICES}))  # shard(): a Mesh
    result["sharded"]["flux"] = _sharding_counts(flux)
    h, w = FLUX_SIZE
    for batch in (3,):
        latents = rng.standard_normal((batch, h // 2, w // 2, 16)).astype(np.float32)
        result["runs"][f"flux_{batch}"] = _compare(flux_one, flux, latents, prompt=PROMPTS[:batch], height=h,
                                                   width=w, num_inference_steps=2, max_sequence_length=16)

    # a divisible batch is placed split over the 8 devices, a non-divisible one whole on each
    split = flux.placement.batch(np.zeros((8, 3), np.float32))
    whole = flux.placement.batch(np.zeros((3, 3), np.float32))
    result["batch_split"] = (len({str(s.index) for s in split.addressable_shards}) == DEVICES
                             and whole.sharding.is_fully_replicated)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
