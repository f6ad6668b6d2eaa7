"""A run config for the plugin model kind and task of tests/plugin_vecnet.py (test_plugins.py)."""

import os

import ml_collections


def get_config():
    here = os.path.dirname(os.path.abspath(__file__))
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.init_from = ""
    # A model kind and task (plugin_vecnet.py), an objective and a sampler (plugin_x0flow.py), all outside unigen.
    c.imports = (os.path.join(here, "plugin_vecnet.py"), os.path.join(here, "plugin_x0flow.py"))
    c.data = dict(name="digits", image_size=8, channels=1, num_classes=10, data_dir="")
    c.model = dict(kind="vecnet", hidden=64)
    c.task = dict(name="digits_vec")
    c.diffusion = dict(kind="flow", time_sampling="logit_normal", loc=0.0, scale=1.0, shift=1.0, time_scale=1000.0)
    c.train = dict(steps=6, batch_size=16, grad_accum=1, lr=1e-3, warmup_steps=1, lr_schedule="constant",
                   weight_decay=0.0, b1=0.9, b2=0.99, grad_clip=1.0, ema_decay=0.9, compute_dtype="float32",
                   frozen=(), cpu_custom_vjps=True, async_checkpointing=True, log_every=1, checkpoint_every=3, keep_checkpoints=2,
                   sample_every=6)
    c.sample = dict(sampler="euler", steps=3, cfg_scale=1.5, guided_channels=-1, eta=0.0, clip_denoised=False,
                    per_class=2, final_euler=False)  # final_euler: the midpoint sampler's option (plugin_x0flow.py)
    c.eval = dict(at_end=False, num_samples=100, seeds=1, batch_size=100)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, context=1, rules="dp")
    return c
