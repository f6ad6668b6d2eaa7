"""Captioned digits: templated captions for the 10 digit classes, with held-out templates.

A caption is a template filled with the digit as a numeral ("a handwritten 7") or as a word
("the digit seven, written by hand"). Training draws captions from `TRAIN_TEMPLATES`;
evaluation prompts use `HELD_OUT_TEMPLATES`, wordings the model never saw, so the protocol
measures whether it follows the text rather than a memorised string.

The set of distinct captions is small (10 x templates + the empty prompt), so a frozen text
encoder runs once per caption and training looks captions up by id: `CaptionSet.captions[0]`
is always the empty prompt "", the null condition of classifier-free guidance.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# {n}: the numeral, {w}: the word. No template contains another number (it would name a
# second digit), and numerals and words are both seen in training.
TRAIN_TEMPLATES = (
    "a handwritten {n}",
    "a handwritten {w}",
    "the digit {w}, written by hand",
    "the digit {n}",
    "a picture of the number {n}",
    "a picture of the number {w}",
    "an image of a handwritten digit {n}",
    "{n}",
    "{w}",
    "someone wrote the number {n}",
    "a scan of a handwritten {w}",
    "a small, blurry {n}",
    "the numeral {w}, drawn by hand",
    "a grey digit: {w}",
)
HELD_OUT_TEMPLATES = (
    "a drawing of the digit {w}",
    "handwritten number {n}",
    "a hand-drawn {w}",
    "this is the number {n}",
    "a low-resolution photo of a handwritten {w}",
    "the figure {n}, written with a pen",
)


def fill(template: str, digit: int) -> str:
    """The caption `template` gives for `digit`."""
    if not 0 <= int(digit) <= 9:
        raise ValueError(f"digit {digit} is not in 0..9")
    return template.format(n=int(digit), w=DIGIT_WORDS[int(digit)])


def digit_named(text: str) -> int | None:
    """The digit a caption names (as a numeral or a word), None if it names none or several."""
    found = {int(m) for m in re.findall(r"(?<![\d.])\d(?![\d.])", text)}
    words = re.findall(r"[a-z]+", text.lower())
    found |= {DIGIT_WORDS.index(w) for w in words if w in DIGIT_WORDS}
    return found.pop() if len(found) == 1 else None


@dataclasses.dataclass(frozen=True)
class CaptionSet:
    """All distinct captions and, per digit, the ids of its training and held-out captions."""
    captions: tuple[str, ...]    # captions[0] == "" (the null prompt)
    digit: np.ndarray            # (N,) int32: the digit each caption names, -1 for ""
    train_ids: np.ndarray        # (10, len(train templates)) int32 ids into `captions`
    held_out_ids: np.ndarray     # (10, len(held-out templates)) int32

    def held_out_for(self, labels) -> np.ndarray:
        """Held-out caption ids naming `labels`: sample i uses held-out template i mod their number."""
        labels = np.asarray(labels, np.int64)
        return self.held_out_ids[labels, np.arange(len(labels)) % self.held_out_ids.shape[1]]


def digit_captions(train_templates=TRAIN_TEMPLATES, held_out_templates=HELD_OUT_TEMPLATES) -> CaptionSet:
    """The caption set of the captioned-digits task (deterministic order)."""
    for t in (*train_templates, *held_out_templates):
        if not isinstance(t, str) or ("{n}" in t) == ("{w}" in t):
            raise ValueError(f"caption template {t!r} must contain exactly one of {{n}} and {{w}}")
    overlap = set(train_templates) & set(held_out_templates)
    if overlap:
        raise ValueError(f"templates {sorted(overlap)} are both training and held-out templates")
    captions, digit = [""], [-1]
    ids = []
    for templates in (train_templates, held_out_templates):
        table = np.zeros((10, len(templates)), np.int32)
        for j, template in enumerate(templates):
            for d in range(10):
                table[d, j] = len(captions)
                captions.append(fill(template, d))
                digit.append(d)
        ids.append(table)
    return CaptionSet(tuple(captions), np.asarray(digit, np.int32), ids[0], ids[1])
