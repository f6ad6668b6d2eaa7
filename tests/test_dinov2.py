"""DINOv2 with and without registers: parity with transformers' `Dinov2Model` and
`Dinov2WithRegistersModel`, both key namings, task-model folders, RAE-style prefixed state dicts,
unigen's own format, and errors.

Tiny models (hidden 32, 2 layers, 2 heads, patch 4, position table for 16 x 16 = a 4 x 4 grid),
LayerScale and LayerNorms moved away from their initial values, registers and CLS random. Sizes:
16 x 16 (the trained grid: no interpolation), 24 x 12 and 32 x 8 (non-square grids, the latter with
as many patches as the table: transformers still interpolates), so the position table is resized
with antialias off (Dinov2Model) and on (registers).
"""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import unigen
from unigen.convert.dinov2 import build_dinov2, dinov2_config, load_dinov2
from unigen.convert.unigen_format import module_to_flat
from unigen.errors import WeightError
from unigen.models import InputSpec, get_model_kind
from unigen.tokenizers import Dinov2, Dinov2Config

RTOL = 1e-4
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=4, image_size=16,
            layerscale_value=0.3)
SIZES = [(16, 16), (24, 12), (32, 8)]
VARIANTS = {"plain": dict(), "registers": dict(num_register_tokens=4),
            "swiglu": dict(num_register_tokens=2, use_swiglu_ffn=True)}


def max_rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


def hf_model(folder, variant, seed=0, task=False):
    """A random transformers DINOv2 of `variant`, saved with save_pretrained to `folder`."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    extra = VARIANTS[variant]
    registers = "num_register_tokens" in extra
    config = (transformers.Dinov2WithRegistersConfig if registers else transformers.Dinov2Config)(**TINY, **extra)
    name = ("Dinov2WithRegisters" if registers else "Dinov2") + ("ForImageClassification" if task else "Model")
    torch.manual_seed(seed)
    model = getattr(transformers, name)(config).eval()
    with torch.no_grad():  # LayerNorms, LayerScale and tokens away from their initial values
        for n, p in model.named_parameters():
            if n.endswith(("norm1.weight", "norm2.weight", "layernorm.weight", "lambda1")):
                p.copy_(p + 0.3 * torch.randn_like(p))
            elif n.endswith(("norm1.bias", "norm2.bias", "layernorm.bias", "register_tokens", "cls_token")):
                p.copy_(0.3 * torch.randn_like(p))
            elif n.endswith("position_embeddings"):
                p.copy_(torch.randn_like(p))
    model.save_pretrained(str(folder))
    return model


def run_ref(model, x):
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(x).permute(0, 3, 1, 2)).last_hidden_state.numpy()


def run(model, x, method="__call__"):
    graphdef, state = nnx.split(model)
    return np.asarray(jax.jit(lambda s, x: getattr(nnx.merge(graphdef, s), method)(x))(state, jnp.asarray(x)))


def pixels(height, width, seed=0):
    return np.random.RandomState(seed).randn(2, height, width, 3).astype(np.float32)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_transformers_parity(tmp_path, variant):
    ref = hf_model(tmp_path / "hf", variant)
    ours = unigen.from_pretrained(str(tmp_path / "hf"))
    assert isinstance(ours, Dinov2)
    cfg = ours.cfg
    reg = VARIANTS[variant].get("num_register_tokens", 0)
    assert (cfg.patch_size, cfg.image_size, cfg.hidden_size, cfg.num_register_tokens) == (4, 16, 32, reg)
    assert cfg.pos_antialias == (reg > 0)
    for height, width in SIZES:
        x = pixels(height, width)
        a, b = run(ours, x), run_ref(ref, x)
        assert a.shape == b.shape == (2, 1 + reg + height * width // 16, 32)
        err = max_rel_err(a, b)
        assert err <= RTOL, (variant, height, width, err)
    np.testing.assert_array_equal(run(ours, x, "tokens"), a[:, 1 + reg:])


def test_module_key_names_and_task_folder(tmp_path):
    """transformers 5 writes the hub names (attention.attention.query, mlp.weights_in); its module
    names (q_proj, gate_proj, ...) read into the same parameters, and so does a task model."""
    from safetensors.torch import save_file
    ref = hf_model(tmp_path / "hub", "swiglu")
    keys = json.dumps(sorted(unigen.convert.read_weights(str(tmp_path / "hub" / "model.safetensors"))))
    assert "attention.attention.query" in keys and "mlp.weights_in" in keys and "q_proj" not in keys
    expected = module_to_flat(unigen.from_pretrained(str(tmp_path / "hub")))
    (tmp_path / "mod").mkdir()
    shutil.copy(tmp_path / "hub" / "config.json", tmp_path / "mod" / "config.json")
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    assert any(".attention.q_proj." in k for k in sd) and any(".mlp.gate_proj." in k for k in sd)
    save_file(sd, str(tmp_path / "mod" / "model.safetensors"))
    task = hf_model(tmp_path / "task", "swiglu", task=True)
    task.dinov2_with_registers.load_state_dict(ref.state_dict())
    task.save_pretrained(str(tmp_path / "task"))
    for folder in ("mod", "task"):
        flat = module_to_flat(unigen.from_pretrained(str(tmp_path / folder)))
        assert flat.keys() == expected.keys()
        for k in expected:
            np.testing.assert_array_equal(flat[k], expected[k], err_msg=f"{folder}: {k}")


def test_rae_prefixed_state_dict_without_final_affine(tmp_path):
    """Inside a diffusers AutoencoderRAE the encoder sits under `encoder.` and its final LayerNorm
    has no weight/bias (an identity-affine LN); other keys are left to the caller."""
    ref = hf_model(tmp_path / "hf", "registers")
    ref.layernorm.weight = ref.layernorm.bias = None
    weights = unigen.convert.read_weights(str(tmp_path / "hf" / "model.safetensors"))
    sd = {f"encoder.{k}": v for k, v in weights.items() if not k.startswith("layernorm.")}
    sd["decoder.proj.weight"] = np.zeros((3, 3), np.float32)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg = dinov2_config(config, layernorm_affine=False)
    ours = build_dinov2(sd, cfg, prefix="encoder.")
    assert ours.norm.scale is None
    x = pixels(24, 12, seed=1)
    assert max_rel_err(run(ours, x), run_ref(ref, x)) <= RTOL
    with pytest.raises(WeightError, match="encoder.layernorm.weight"):
        build_dinov2(sd, dinov2_config(config), prefix="encoder.")


def test_unigen_format_round_trip_and_model_kind(tmp_path):
    hf_model(tmp_path / "hf", "registers")
    model = unigen.from_pretrained(str(tmp_path / "hf"), attention_backend="xla")
    unigen.save_pretrained(model, str(tmp_path / "ours"))
    back = load_dinov2(str(tmp_path / "ours"))
    assert back.cfg == model.cfg
    a, b = module_to_flat(model), module_to_flat(back)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    kind = get_model_kind("dinov2")
    fields = dict(hidden_size=32, num_layers=1, num_heads=2, patch_size=4, image_size=16)
    spec = InputSpec(side=16, channels=3, num_classes=0, dtype="bfloat16")  # what the data and train sections give
    assert kind.from_section({"kind": "dinov2", **fields}, spec) == Dinov2Config(**fields, dtype="bfloat16")
    with pytest.raises(ValueError, match="config.model.heads"):
        kind.from_section({"heads": 2}, spec)


def test_errors(tmp_path):
    transformers = pytest.importorskip("transformers")
    transformers.BertModel(transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=16)).save_pretrained(
        str(tmp_path / "bert"))
    expect = r"model_type 'bert' \(BertModel\), not DINOv2.*'dinov2'.*'dinov2_with_registers'"
    with pytest.raises(WeightError, match=expect):
        load_dinov2(str(tmp_path / "bert"))
    with pytest.raises(WeightError, match="no config.json"):
        load_dinov2(str(tmp_path))

    model = Dinov2(Dinov2Config(hidden_size=16, num_layers=1, num_heads=2, patch_size=4, image_size=16),
                   rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"18x16 is not divisible by its patch size 4.*height 16 or 20, width 16"):
        model(jnp.zeros((1, 18, 16, 3)))
    with pytest.raises(ValueError, match="Dinov2Config.hidden_size=30: not divisible by num_heads=4"):
        Dinov2Config(hidden_size=30, num_heads=4).validate()

    hf_model(tmp_path / "hf", "plain")
    config_path = tmp_path / "hf" / "config.json"
    good = json.loads(config_path.read_text())
    for change, message in (
            ({"image_size": 20}, r"'embeddings.position_embeddings' has shape \(1, 17, 32\), but .*image_size=20.*"
                                 r"implies \(1, 26, 32\); correct image_size, patch_size, hidden_size"),
            ({"num_hidden_layers": 1}, r"encoder.layer.1.*check num_hidden_layers=1"),
            ({"image_size": [16, 24]}, "square"),
            ({"hidden_act": "tanh"}, "hidden_act")):
        config_path.write_text(json.dumps({**good, **change}))
        with pytest.raises(WeightError, match=message):
            unigen.from_pretrained(str(tmp_path / "hf"))
    # a field transformers' Dinov2Model ignores (the registers count of the other class) loads, with a warning
    config_path.write_text(json.dumps({**good, "num_register_tokens": 4}))
    with pytest.warns(UserWarning, match=r"\['num_register_tokens'\] are not options"):
        assert unigen.from_pretrained(str(tmp_path / "hf")).cfg.num_register_tokens == 0
    config_path.write_text(json.dumps(good))
    with pytest.raises(unigen.errors.ConfigError, match="layernorm_affine"):
        unigen.from_pretrained(str(tmp_path / "hf"), layernorm_affine=False)
