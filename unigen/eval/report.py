"""Readable table of evaluation results (rows: samples and yardsticks)."""

from __future__ import annotations

import numpy as np

from unigen.eval.baselines import baselines
from unigen.eval.metrics import COPY_PERCENTILE, evaluate_samples, reference

_COLUMNS = (("accuracy", "class acc. ↑", 4), ("fd", "FD (test) ↓", 3),
            ("nn_dist", "NN-train L2", 3), ("copy_share", f"< p{COPY_PERCENTILE:g} share", 3))


def _cell(m: dict | None, digits: int) -> str:
    return "—" if m is None else f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f}"


def format_report(rows: dict[str, dict], title: str | None = None) -> str:
    """rows: name -> evaluate_samples() result. Returns a fixed-width table."""
    head = ["", "n/seed", "seeds"] + [c[1] for c in _COLUMNS]
    body = []
    for name, r in rows.items():
        n = r["n_per_seed"]
        n_txt = str(n[0]) if len(set(n)) == 1 else f"{min(n)}-{max(n)}"
        body.append([name, n_txt, str(r["num_seeds"])] +
                    [_cell(r.get(key), d) for key, _, d in _COLUMNS])
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]

    def line(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths)))

    ref = reference()
    out = [title] if title else []
    out += [line(head), "  ".join("-" * w for w in widths)] + [line(r) for r in body]
    out.append(f"mean ± std over seeds. FD: classifier penultimate features vs the test split.\n"
               f"NN-train L2: mean distance (8x8, [-1,1]) to the nearest train image (test "
               f"images: {ref.test_nn_mean:.3f}).\n< p{COPY_PERCENTILE:g} share: samples closer "
               f"than {ref.copy_threshold:.3f}, the p{COPY_PERCENTILE:g} of test-to-train "
               f"distances (test images: 0.05; copies: 1).")
    return "\n".join(out)


def report(images, labels, seeds, *, baseline_n=None, with_baselines=True, title="samples"):
    """(rows, printable table): the samples' metrics (labels=None: unlabelled samples, no
    accuracy) and, computed the same way at the same count per seed, the Gaussian-mixture and
    memoriser yardsticks."""
    rows = {"samples": evaluate_samples(images, labels, seeds=seeds)}
    if with_baselines:
        n = baseline_n or int(np.median(rows["samples"]["n_per_seed"]))
        rows.update(baselines(n=n))
    text = format_report(rows, title=f"{title}: {len(images)} samples {images.shape[1]}x{images.shape[2]} "
                                     f"(evaluated at 8x8)")
    return rows, text
