"""What a model sees of the data: pixels, or a tokenizer's latents (config.data.latent_encoder).

Pure config arithmetic (no imports), so model kinds can size their inputs without loading the
tokenizer: `data.latent_downsample` and `data.latent_channels` state the tokenizer's shape in
the config, and the latent task checks them against the tokenizer itself
(unigen/tasks/latent_space.py). `check_data_section` checks the fields every task's data has
(the task base calls it; the trainer checks only its own sections).
"""

from unigen.errors import ConfigError

IMAGE_SIZES = (8, 16, 32, 64, 128, 256, 512)


def check_data_section(data) -> None:
    """The shared fields of `config.data`: ConfigError naming the field and the fix."""
    def need(ok, field, fix):
        if not ok:
            raise ConfigError(f"config.data.{field}={data.get(field)!r}: {fix}")
    need(isinstance(data.get("latent_encoder") or "", str), "latent_encoder",
         "give a tokenizer path unigen.from_pretrained reads, or '' to train in pixel space")
    need(data.get("image_size") in IMAGE_SIZES, "image_size", "use a power of two between 8 and 512")
    need(data.get("channels") in (1, 3, 4), "channels", "use 1 (grey), 3 (RGB) or 4 (latents)")
    n = data.get("num_classes")
    need(isinstance(n, int) and not isinstance(n, bool) and n >= 0, "num_classes", "must be >= 0 (0 = unlabelled)")


def model_input_shape(data) -> tuple[int, int]:
    """(side, channels) of the model's input for a run's `config.data`."""
    if getattr(data, "latent_encoder", ""):
        down, channels = getattr(data, "latent_downsample", None), getattr(data, "latent_channels", None)
        for field, value in (("latent_downsample", down), ("latent_channels", channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"config.data.{field}={value!r}: with a latent_encoder, state the tokenizer's "
                                 f"{field.split('_')[1]} as a positive int (e.g. 8 and 4 for sd-vae-ft-ema)")
        if data.image_size % down:
            raise ValueError(f"config.data.image_size={data.image_size}: not divisible by "
                             f"config.data.latent_downsample={down}")
        return data.image_size // down, channels
    return data.image_size, data.channels
