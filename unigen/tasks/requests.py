"""What a task offers to draw: named sample requests, each with the arguments it takes.

    class MyTask(DiffusionTask):
        def sample_requests(self):
            return (*super().sample_requests(),
                    SampleRequest("prompts", "one grid row per prompt", self._draw_prompts,
                                  arguments=(PROMPT, PER_PROMPT), required=("prompt",), selected_by="prompt"))

`infer/sample.py` builds its options from the work dir's task: `--mode NAME` picks a request
(the choices are the task's request names), each request's `arguments` become flags, and a request
is also picked when its `selected_by` argument is given (`--prompt`, `--protocol`); with neither, the
task's first request runs. A flag of another request, or a missing `required` one, is refused
naming the request it belongs to. A request's `run(given, generate, seed) -> Drawn` gets the
values of its arguments (dest -> value, defaults filled in), `generate(cond, num, seed, label=None,
**options)` (decoded samples; options such as a mode reach the task's generator) and the seed.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import numpy as np

from unigen.cli_args import class_list, int_at_least
from unigen.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Argument:
    """One command-line option of a sample request."""
    flag: str                 # "--prompt"
    help: str
    type: Callable = str
    repeat: bool = False      # may be given several times (a list, in order)
    switch: bool = False      # a flag without a value (True when given)
    default: Any = None       # the value a request gets when the flag is absent
    noun: str = ""            # what a missing required value is called in the error ("a prompt")

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def add_to(self, parser) -> None:
        # Absent flags parse as None, so a request can tell a given value from its default.
        if self.switch:
            parser.add_argument(self.flag, dest=self.dest, action="store_true", default=None, help=self.help)
        else:
            parser.add_argument(self.flag, dest=self.dest, type=self.type, action="append" if self.repeat else "store",
                                default=None, help=self.help)


@dataclasses.dataclass(frozen=True)
class Drawn:
    """What a request drew: `arrays` go into the .npz, `grid` (images) into the .png with `rows`
    rows labelled by `row_labels`; `lines` are printed (e.g. the captions an image was given)."""
    arrays: dict
    count: int
    grid: np.ndarray | None = None
    rows: int | None = None
    row_labels: list | None = None
    lines: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class SampleRequest:
    name: str
    help: str
    run: Callable                       # run(given: dict, generate, seed: int) -> Drawn
    arguments: tuple[Argument, ...] = ()
    required: tuple[str, ...] = ()      # dests that must be given
    selected_by: str | None = None      # a dest whose presence picks this request without --mode

    def fill(self, values: dict) -> dict:
        """The values of this request's arguments, defaults for the absent ones."""
        return {a.dest: (a.default if values.get(a.dest) is None else values[a.dest]) for a in self.arguments}


def schema_arguments(schema, what: str) -> tuple[Argument, ...]:
    """One flag per field of an options dataclass (a sampler's registered schema): `--clip-denoised
    true`, `--eta 0.5`; typed by the field's default (bool, int, float, else str). Absent flags keep
    the config's value."""
    from unigen.cli_args import boolean, finite_float

    def kind(default):
        if isinstance(default, bool):
            return boolean
        if isinstance(default, int):
            return int
        return finite_float() if isinstance(default, float) else str
    return tuple(Argument("--" + f.name.replace("_", "-"), f"{what} (default: the config's, else {f.default!r})",
                          kind(f.default)) for f in dataclasses.fields(schema))


# ---- arguments several requests share ------------------------------------------------------------
PER_CLASS = Argument("--per-class", "samples per class (per grid row)", int_at_least(1), default=8)
CLASSES = Argument("--classes", "comma-separated class ids (default: all)", class_list)
CLASS = Argument("--class", "a class id (repeatable; joins --classes); one grid row each", int_at_least(0), repeat=True)
PROMPT = Argument("--prompt", "a text prompt (repeat for several); one grid row each", repeat=True, noun="a prompt")
PER_PROMPT = Argument("--per-prompt", "samples per prompt (per grid row)", int_at_least(1), default=8)
NUM = Argument("--num", "how many samples", int_at_least(1), default=16)
IMAGE_INPUT = Argument("--image", "an image to condition on: a file, or test:0-9 / test:3,5 (test-split indices)",
                       repeat=True, noun="images")
PROTOCOL = Argument("--protocol", "the evaluation protocol: the run's eval.num_samples per seed with the test "
                                  "split's label mix (a `seed` array goes into the npz); reproduces eval.json",
                    switch=True, default=False)


def given_classes(given: dict, num_classes: int | None = None) -> list[int] | None:
    """--classes then every --class, in order (None when neither); checked against 0..num_classes-1
    when that is given."""
    classes = None if given.get("classes") is None else list(given["classes"])
    if given.get("class"):
        classes = (classes or []) + list(given["class"])
    bad = [c for c in classes or () if num_classes is not None and not 0 <= c < num_classes]
    if bad:
        raise ConfigError(f"--classes {classes}: {bad} outside 0..{num_classes - 1}")
    return classes


def repeated_prompts(given: dict) -> np.ndarray:
    """Each --prompt `per_prompt` times, in order (N,) str."""
    return np.repeat(np.asarray(given["prompt"], dtype=str), given["per_prompt"])


def read_images(specs, data_cfg, test_images: Callable[[], np.ndarray]) -> np.ndarray:
    """--image values as (N, H, W, C) in [-1, 1] at the data set's size and channels: image files
    (resized as the loader does not: bicubic), or `test:SPEC` for images of `test_images()`."""
    size, channels = data_cfg.image_size, data_cfg.channels
    out = []
    for spec in specs:
        if spec.startswith("test:"):
            images = test_images()
            out.extend(images[_indices(spec[5:], len(images))])
            continue
        if not os.path.isfile(spec):
            raise ConfigError(f"--image {spec!r}: no such file (give an image file or test:INDICES)")
        from PIL import Image  # only when a file is given
        try:
            img = Image.open(spec).convert("L" if channels == 1 else "RGB").resize((size, size), Image.BICUBIC)
        except OSError as e:
            raise ConfigError(f"--image {spec!r}: not an image PIL can read ({e})") from None
        out.append(np.asarray(img, np.float32).reshape(size, size, channels) / 127.5 - 1.0)
    return np.stack(out).astype(np.float32)


def _indices(spec: str, size: int) -> list[int]:
    """'0-9' / '3,5,7' / '4' -> indices into a split of `size` images."""
    out = []
    try:
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    except ValueError:
        raise ConfigError(f"--image test:{spec}: give indices such as test:0-9 or test:3,5") from None
    bad = [i for i in out if not 0 <= i < size]
    if bad or not out:
        raise ConfigError(f"--image test:{spec}: indices {bad or out} outside the test split's 0..{size - 1}")
    return out


# ---- picking the request a command line asks for --------------------------------------------------
def add_arguments(parser, requests) -> None:
    """Every request's arguments (once each) and `--mode` with the requests' names as choices."""
    seen = {}
    for request in requests:
        for argument in request.arguments:
            if argument.flag in seen and seen[argument.flag] != argument:
                raise ValueError(f"sample requests {seen[argument.flag]} and {argument}: one flag, two meanings")
            seen.setdefault(argument.flag, argument)
    for argument in seen.values():
        argument.add_to(parser)
    names = [r.name for r in requests]
    parser.add_argument("--mode", choices=names, default=None,
                        help="what to draw: " + "; ".join(f"{r.name}: {r.help}" for r in requests)
                             + f" (default {names[0]})")


def choose(requests, mode: str | None, values: dict) -> SampleRequest:
    """The request `--mode` names, else the first one whose `selected_by` flag is given, else the
    first; ConfigError when a given flag belongs to another request or a required one is missing."""
    given = {dest for dest, value in values.items() if value is not None}
    if mode is not None:
        request = next(r for r in requests if r.name == mode)
    else:
        request = next((r for r in requests if r.selected_by in given), requests[0])
    own = {a.dest for a in request.arguments}
    flags = {a.dest: a for r in requests for a in r.arguments}
    for dest in sorted(given & set(flags) - own):
        owners = [r.name for r in requests if dest in {a.dest for a in r.arguments}]
        raise ConfigError(f"{flags[dest].flag} is an argument of --mode {' / '.join(owners)}, not of --mode "
                          f"{request.name}")
    for dest in request.required:
        if dest not in given:
            a = flags[dest]
            raise ConfigError(f"--mode {request.name} needs {a.noun or a.flag}: {a.flag} ...")
    return request
