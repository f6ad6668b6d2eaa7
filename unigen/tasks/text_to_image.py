"""The "text_to_image" task: a diffusion objective conditioned on a frozen text encoder's output,
on captioned digits (unigen/data/captions.py).

The model takes the prompt's token states `context` (B, T, D) and its pooled vector `pooled`
(B, D) (MM-DiT, SD3 §2). The distinct captions are few, so the frozen encoder (config
`text.encoder`: a name or folder `unigen.text.resolve_text_encoder` reads, by default
sentence-transformers' all-MiniLM-L6-v2) runs once per caption when the task is built; the
table travels as a frozen part, and each training example draws one of its digit's training
captions per step. The empty prompt "" is the null condition: condition dropout replaces a
prompt by it (tokens and pooled vector together, one condition group) and guidance uses it
for the unconditional branch, as SD3's pipeline does with its negative prompt.

Evaluation prompts come from the held-out templates (sample i of a seed uses held-out template
i mod their number), scored by the digits protocol against the digit the prompt names.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from unigen.data.captions import digit_captions
from unigen.diffusion.objective import per_example, split_keys
from unigen.errors import ConfigError
from unigen.tasks.base import register_task
from unigen.tasks.diffusion import DiffusionTask
from unigen.tasks.frozen import text_encoder
from unigen.tasks.requests import PER_PROMPT, PROMPT, Drawn, SampleRequest, repeated_prompts

TEXT_CONDITIONS = ("context", "pooled")


@functools.lru_cache(maxsize=4)
def _encode_table(name: str, captions: tuple[str, ...]):
    """(tokens (N, T, D), pooled (N, D)) float32 numpy for the captions, padded to the longest."""
    out = text_encoder(name).encode(list(captions))
    return np.asarray(out.tokens, np.float32), np.asarray(out.pooled, np.float32)


@register_task("text_to_image")
class TextToImageTask(DiffusionTask):
    def __init__(self, cfg, model_kind, model_cfg):
        super().__init__(cfg, model_kind, model_cfg)
        missing = [name for name in TEXT_CONDITIONS if name not in self.conditions]
        if missing:
            raise ConfigError(f"config.task.name='text_to_image' needs a model taking {list(TEXT_CONDITIONS)}; "
                              f"model kind {model_kind.name!r} lacks {missing} (use model.kind='mmdit')")
        if cfg.data.name != "digits":
            raise ConfigError(f"config.data.name={cfg.data.name!r}: the text_to_image task captions the digits "
                              f"data set; other captioned data sets are not supported yet")
        self.encoder_name = (cfg.get("text") or {}).get("encoder", "")
        if not isinstance(self.encoder_name, str) or not self.encoder_name:
            raise ConfigError("config.text.encoder is empty: name a text encoder folder or 'all-MiniLM-L6-v2'")
        self.captions = digit_captions()
        self.tokens, self.pooled = _encode_table(self.encoder_name, self.captions.captions)
        self.context_length = self.tokens.shape[1]
        for name, width, field in (("context", self.tokens.shape[-1], "joint_attention_dim"),
                                   ("pooled", self.pooled.shape[-1], "pooled_projection_dim")):
            want = getattr(model_cfg, field, width)
            if want != width:
                raise ConfigError(f"config.model.{field}={want}: the text encoder {self.encoder_name!r} gives "
                                  f"{name} vectors of width {width}; set it to {width}")
        # The empty prompt (captions[0]) is the null condition of both text conditions.
        self.conditions = dict(self.conditions,
                               context=dataclasses.replace(self.conditions["context"], null=self.tokens[0]),
                               pooled=dataclasses.replace(self.conditions["pooled"], null=self.pooled[0]))
        self.batch_keys = {}

    labelled = True  # every prompt names a digit

    def frozen(self, seed):
        return {"tokens": jnp.asarray(self.tokens), "pooled": jnp.asarray(self.pooled)}

    def loss(self, model, batch, rng, frozen):
        x0, labels = self.clean_data(batch, rng), batch["label"]
        k_caption, k_drop, k_loss = split_keys(rng, 3)
        train_ids = jnp.asarray(self.captions.train_ids)
        pick = per_example(k_caption, labels.shape[0], lambda k: jax.random.randint(k, (), 0, train_ids.shape[1]))
        ids = train_ids[labels, pick]
        cond = self.drop_conditions({"context": frozen["tokens"][ids], "pooled": frozen["pooled"][ids]}, k_drop)
        losses = self.process.losses(model, x0, k_loss, **cond)
        return losses["loss"].mean(), {k: v.mean() for k, v in losses.items() if k != "sigma"}

    # ---- prompts ----------------------------------------------------------------------------
    def caption_ids_for_labels(self, labels) -> np.ndarray:
        return self.captions.held_out_for(labels)

    def conditions_for_labels(self, labels):
        ids = self.caption_ids_for_labels(labels)
        return {"context": self.tokens[ids], "pooled": self.pooled[ids]}

    def protocol_annotations(self, labels, seeds):
        """The prompt of each protocol sample (per seed, as `protocol_samples` asked for them)."""
        prompts = np.empty(len(labels), dtype=object)
        for s in np.unique(seeds):
            where = np.flatnonzero(seeds == s)
            prompts[where] = [self.captions.captions[i] for i in self.caption_ids_for_labels(labels[where])]
        return {"prompts": prompts.astype(str)}

    def conditions_for_prompts(self, prompts) -> dict:
        """The model's conditions for any prompts (encoded now; padded to the training length)."""
        if isinstance(prompts, str) or not len(prompts):
            raise ValueError("give a non-empty list of prompts")
        encoder = text_encoder(self.encoder_name)
        with warnings.catch_warnings():  # only measures the length; encode() below warns once
            warnings.simplefilter("ignore")
            length = encoder.tokenize(list(prompts)).input_ids.shape[1]
        out = encoder.encode(list(prompts), pad_to=max(self.context_length, length))
        return {"context": np.asarray(out.tokens, np.float32), "pooled": np.asarray(out.pooled, np.float32)}

    def sample_requests(self):
        prompts = SampleRequest("prompts", "one grid row per --prompt", self.draw_prompts, (PROMPT, PER_PROMPT),
                                required=("prompt",), selected_by="prompt")
        return (*super().sample_requests(), prompts)

    def draw_prompts(self, given, generate, seed):
        """The "prompts" request: `per_prompt` samples of each prompt, a grid row each."""
        prompts = repeated_prompts(given)
        try:
            cond = self.conditions_for_prompts(list(prompts))
        except ValueError as e:
            raise ConfigError(f"--prompt: {e}") from None
        images = generate(cond, len(prompts), seed, label="sample")
        return Drawn(dict(images=images.astype(np.float32), prompts=prompts), len(images), images,
                     len(given["prompt"]), list(given["prompt"]))

    def grid(self, per_row, classes=None):
        """One row per digit, each prompted with a held-out caption."""
        ids = np.repeat(self._grid_caption_ids(classes), per_row)
        return {"context": self.tokens[ids], "pooled": self.pooled[ids]}, len(ids), len(ids) // per_row

    def grid_labels(self, per_row, classes=None):
        return [self.captions.captions[i] for i in self._grid_caption_ids(classes)]  # each row's prompt

    def _grid_caption_ids(self, classes):
        labels = np.asarray(list(range(10)) if classes is None else list(classes), np.int64)
        return self.captions.held_out_ids[labels, labels % self.captions.held_out_ids.shape[1]]
