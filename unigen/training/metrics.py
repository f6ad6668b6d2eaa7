"""Metrics a person can plot: `metrics.jsonl` (one JSON object per logged step), `loss.png`, and
TensorBoard event files in `<workdir>/tensorboard` (scalars and sample grids; tensorboardX, no
TensorFlow): `tensorboard --logdir <workdir>/tensorboard`."""

from __future__ import annotations

import json
import os


class MetricsLog:
    def __init__(self, workdir: str, *, resume_step: int = 0):
        from tensorboardX import SummaryWriter

        self.path = os.path.join(workdir, "metrics.jsonl")
        self.rows = []
        # purge_step: a resumed run hides the events an interrupted one wrote after its checkpoint.
        self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1,
                                    flush_secs=30)
        if os.path.exists(self.path):
            # A resumed run repeats the steps after its checkpoint: drop their old rows.
            with open(self.path) as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by a kill
                        continue
                    if row.get("step", 0) <= resume_step:
                        self.rows.append(row)
            self._rewrite()

    def _rewrite(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.rows)
        os.replace(tmp, self.path)

    @staticmethod
    def last_row(workdir: str, step: int) -> dict:
        """The logged metrics of `step` ({} if it was not logged), without the step and rates."""
        path = os.path.join(workdir, "metrics.jsonl")
        if not os.path.exists(path):
            return {}
        with open(path) as f:
            for line in reversed(f.readlines()):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if row.get("step") == step:
                    return {k: v for k, v in row.items() if k not in ("step", "steps_per_s", "images_per_s")}
        return {}

    def write(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"train/{key}", value, row["step"])

    def image(self, tag: str, grid, step: int) -> None:
        """A (H, W, C) uint8 image (a sample grid) at `step`."""
        self.writer.add_image(tag, grid, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()

    def plot(self, png_path: str) -> None:
        # A Figure without pyplot: drawing needs no GUI backend, and the process's (a notebook's)
        # matplotlib backend is left as the user set it.
        from matplotlib.figure import Figure

        rows = [r for r in self.rows if "loss" in r]
        if not rows:
            return
        fig = Figure(figsize=(9, 3.2))
        ax = fig.subplots(1, 2)
        steps = [r["step"] for r in rows]
        ax[0].plot(steps, [r["loss"] for r in rows], label="loss")
        if "mse" in rows[0]:
            ax[0].plot(steps, [r["mse"] for r in rows], label="mse (eps)")
        ax[0].set_yscale("log")
        ax[0].set_xlabel("step")
        ax[0].legend()
        ax[0].set_title("training loss")
        ax[1].plot(steps, [r["grad_norm"] for r in rows])
        ax[1].set_yscale("log")
        ax[1].set_xlabel("step")
        ax[1].set_title("gradient norm")
        fig.tight_layout()
        fig.savefig(png_path, dpi=100)


def log_eval(workdir: str, step: int, rows: dict) -> None:
    """The evaluation's figures (the samples' row: mean over seeds) as TensorBoard scalars."""
    from tensorboardX import SummaryWriter

    with SummaryWriter(os.path.join(workdir, "tensorboard")) as writer:
        for name, value in rows.get("samples", {}).items():
            if isinstance(value, dict) and "mean" in value:
                writer.add_scalar(f"eval/{name}", value["mean"], step)
