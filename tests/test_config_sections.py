"""Typed config sections (unigen/config_sections.py) and the trainer's same-run check built on
their metadata: which fields a resumed run may change, and the value of a field a work dir was
written before. No training: the check reads the work dir's config.json only."""

import dataclasses
import os

import ml_collections
import pytest

from unigen.config_sections import config_section, read_section, section_field, section_schema
from unigen.errors import CheckpointError, ConfigError
from unigen.training.config import load_config_file, to_json
from unigen.training.loop import _check_same_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@config_section("toy_section")
@dataclasses.dataclass(frozen=True)
class ToyOptions:
    width: int = 4
    temperature: float = section_field(1.0, resumable=True)
    mode: str = section_field("plain", before="plain")


def _workdir(tmp_path, cfg):
    workdir = tmp_path / "run"
    os.makedirs(workdir, exist_ok=True)
    (workdir / "config.json").write_text(to_json(cfg))
    return str(workdir)


def _config(name="dit_digits.py"):
    return load_config_file(os.path.join(ROOT, "configs", name))


def test_read_section_fills_defaults_refuses_unknown_fields_and_is_hashable():
    cfg = ml_collections.ConfigDict(dict(toy_section=dict(width=8, mode=["a", "b"])))
    opts = read_section(ToyOptions, cfg)
    assert opts == ToyOptions(width=8, mode=("a", "b")) and hash(opts)
    assert read_section(ToyOptions, ml_collections.ConfigDict()) == ToyOptions()
    assert read_section(ToyOptions, ml_collections.ConfigDict(), width=2).width == 2
    with pytest.raises(ConfigError, match=r"config.toy_section.widht: unknown option; known: \['mode', 'temperature'"):
        read_section(ToyOptions, ml_collections.ConfigDict(dict(toy_section=dict(widht=8))))
    assert section_schema("toy_section") is ToyOptions and section_schema("unidiffuser").section == "unidiffuser"


def test_same_run_check_follows_the_owners_metadata(tmp_path):
    import unigen.models.uvit  # noqa: F401  (declares model.init)
    cfg = _config()
    cfg.toy_section = dict(width=4, temperature=1.0)
    workdir = _workdir(tmp_path, cfg)

    def resumes(change):
        new = ml_collections.ConfigDict(cfg.to_dict())
        change(new)
        try:
            _check_same_run(workdir, new)
            return True
        except CheckpointError as e:
            assert "use a new --workdir" in str(e)
            return False

    # The trainer's own resumable fields, and those the data set and the model kinds declare ...
    assert resumes(lambda c: setattr(c.train, "lr", 5e-4))
    assert resumes(lambda c: setattr(c.data, "data_dir", "/elsewhere"))
    assert resumes(lambda c: setattr(c.model, "remat", True))
    # ... a field its section's schema marks resumable ...
    assert resumes(lambda c: setattr(c.toy_section, "temperature", 0.5))
    # ... but not what changes the network, the data or a section's other fields.
    assert not resumes(lambda c: setattr(c.model, "depth", 6))
    assert not resumes(lambda c: setattr(c.data, "image_size", 16))
    assert not resumes(lambda c: setattr(c.toy_section, "width", 8))
    # A field introduced later resumes an older work dir only with the value it then implied.
    assert resumes(lambda c: setattr(c.toy_section, "mode", "plain"))
    assert not resumes(lambda c: setattr(c.toy_section, "mode", "fancy"))
    assert resumes(lambda c: setattr(c.model, "init", "reference"))
    assert not resumes(lambda c: setattr(c.model, "init", "xavier"))


def test_unidiffuser_work_dirs_from_before_its_new_fields_still_resume(tmp_path):
    import unigen.tasks.unidiffuser  # noqa: F401  (declares its section)
    cfg = _config("unidiffuser_digits.py")
    old = ml_collections.ConfigDict(cfg.to_dict())
    del old.unidiffuser["endpoint_prob"], old.unidiffuser["clip_embedding"]
    workdir = _workdir(tmp_path, old)
    cfg.unidiffuser.endpoint_prob, cfg.unidiffuser.clip_embedding = 0.0, "anchor"
    _check_same_run(workdir, cfg)
    cfg.unidiffuser.endpoint_prob = 0.1
    with pytest.raises(CheckpointError, match="unidiffuser.endpoint_prob=None, this run asks for 0.1"):
        _check_same_run(workdir, cfg)
