"""`unigen.pipelines.from_pretrained` picks the pipeline a folder's model_index.json names, and
`infer/text_to_image.py` turns prompts into PNGs and a labelled grid with it (a tiny random Flux
schnell folder built by test_flux_pipeline.py's builder; the images' parity with diffusers is
test_flux_pipeline.py's and test_sd3_pipeline.py's)."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from test_flux_pipeline import build_pipeline  # noqa: E402
from test_sd3_pipeline import _clip_tokenizer_folders, _t5_tokenizer_folder  # noqa: E402

from unigen.errors import WeightError  # noqa: E402
from unigen.infer.text_to_image import main  # noqa: E402
from unigen.pipelines import FluxPipeline, from_pretrained, pipeline_names  # noqa: E402


@pytest.fixture(scope="module")
def schnell(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i_cli")
    clip_dirs, clip_vocab = _clip_tokenizer_folders(root)
    t5_dir, t5_vocab = _t5_tokenizer_folder(root)
    return build_pipeline(str(root), (clip_dirs["tokenizer"], clip_vocab, t5_dir, t5_vocab), dev=False, seed=0)[1]


def test_from_pretrained_reads_the_class_model_index_names(schnell, tmp_path):
    pipe = from_pretrained(schnell)
    assert isinstance(pipe, FluxPipeline)
    assert {"DiTPipeline", "StableDiffusion3Pipeline", "FluxPipeline"} <= set(pipeline_names())
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(WeightError, match=r"_class_name 'KandinskyPipeline' has no unigen pipeline; unigen reads "
                                          r"\[.*'FluxPipeline'.*\]"):
        from_pretrained(str(other))
    with pytest.raises(WeightError, match="no model_index.json"):
        from_pretrained(str(tmp_path))


def test_cli_writes_pngs_and_a_grid_per_prompt(schnell, tmp_path, capsys):
    out = tmp_path / "images"
    prompts = ["a red bicycle", "a lighthouse at dusk, oil painting"]
    assert main(["--pipeline", schnell, "--prompt", prompts[0], "--prompt", prompts[1], "--num", "2",
                 "--steps", "2", "--size", "16x32", "--seed", "3", "--max-sequence-length", "16",
                 "--out", str(out)]) == 0
    names = sorted(os.listdir(out))
    assert names == ["00_00_a_red_bicycle.png", "00_01_a_red_bicycle.png",
                     "01_00_a_lighthouse_at_dusk_oil_painting.png", "01_01_a_lighthouse_at_dusk_oil_painting.png",
                     "grid.png"]
    from PIL import Image
    first = np.asarray(Image.open(out / names[0]))
    assert first.shape == (16, 32, 3) and first.std() > 0
    # The files are the pipeline's images for the same seed and settings.
    pipe = from_pretrained(schnell)
    want = pipe(prompts, num_images_per_prompt=2, num_inference_steps=2, height=16, width=32, seed=3,
                max_sequence_length=16, output_type="np")
    np.testing.assert_array_equal(first, np.round(want[0] * 255).clip(0, 255).astype(np.uint8))
    assert "wrote 4 images of 16x32 (FluxPipeline)" in capsys.readouterr().out


def test_lora_files_merge_into_the_pipeline_and_the_cli(schnell, tmp_path, capsys):
    # A LoRA file (unigen's writer; diffusers reads it: tests/test_lora.py) merged by the pipeline and by --lora.
    import jax

    from unigen.lora import init_lora, save_lora
    pipe = from_pretrained(schnell)
    lora = init_lora(pipe.transformer, rank=2, alpha=4.0)
    keys = iter(jax.random.split(jax.random.key(1), len(lora.params)))
    lora = lora.replace({m: {"a": p["a"], "b": 0.5 * jax.random.normal(next(keys), p["b"].shape)}
                         for m, p in lora.params.items()})
    path = str(tmp_path / "lora.safetensors")
    save_lora(path, lora)
    call = dict(num_inference_steps=2, height=16, width=32, seed=3, max_sequence_length=16, output_type="np")
    base = pipe("a red bicycle", **call)
    adapted = pipe.load_lora_weights(path, scale=0.7)("a red bicycle", **call)
    assert np.abs(adapted - base).max() > 1e-3
    np.testing.assert_allclose(pipe.unload_lora_weights()("a red bicycle", **call), base, atol=1e-5)
    out = tmp_path / "lora_images"
    assert main(["--pipeline", schnell, "--prompt", "a red bicycle", "--steps", "2", "--size", "16x32", "--seed", "3",
                 "--max-sequence-length", "16", "--lora", path, "--lora-scale", "0.7", "--out", str(out)]) == 0
    from PIL import Image
    got = np.asarray(Image.open(out / "00_00_a_red_bicycle.png"))
    np.testing.assert_array_equal(got, np.round(adapted[0] * 255).clip(0, 255).astype(np.uint8))
    assert "1 LoRA(s) at scale 0.7" in capsys.readouterr().out
    assert main(["--pipeline", schnell, "--prompt", "x", "--lora", str(tmp_path / "none.safetensors"),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--lora" in err and "none.safetensors: no such file" in err


def test_cli_bad_input_is_one_line(schnell, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--pipeline", schnell, "--prompt", "x", "--size", "big", "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "'big': give HEIGHTxWIDTH" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["--pipeline", schnell, "--prompt", "x", "--out", str(blocker / "o")]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["--pipeline", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "o")]) == 2
    assert "no model_index.json" in capsys.readouterr().err
