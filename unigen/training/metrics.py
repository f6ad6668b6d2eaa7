"""Metrics a person can plot: `metrics.jsonl` (one JSON object per logged step), `loss.png`, and
TensorBoard event files in `<workdir>/tensorboard` (scalars and sample grids; tensorboardX, no
TensorFlow): `tensorboard --logdir <workdir>/tensorboard`."""

from __future__ import annotations

import json
import os

from unigen.training.disk import disk_full, is_disk_full, writing


class MetricsLog:
    def __init__(self, workdir: str, *, resume_step: int = 0):
        from tensorboardX import SummaryWriter

        self.path = os.path.join(workdir, "metrics.jsonl")
        # A resumed run repeats the steps after its checkpoint: their old rows are dropped, and a
        # step logged twice (by two runs that wrote one work dir before it was locked) is kept
        # once, so every resume leaves one row per step, in step order.
        old = _read_rows(self.path)
        by_step = {}
        for row in old:
            if isinstance(row.get("step"), int) and row["step"] <= resume_step:
                by_step[row["step"]] = row  # the later row of a step wins (it was written last)
        self.rows = [by_step[s] for s in sorted(by_step)]
        if self.rows != old:
            with writing(self.path, sum(len(json.dumps(r)) + 1 for r in self.rows)):
                self._rewrite()
        # purge_step: a resumed run hides the events an interrupted one wrote after its checkpoint.
        self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1,
                                    flush_secs=30)

    def _rewrite(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.rows)
        os.replace(tmp, self.path)

    @staticmethod
    def last_logged_step(workdir: str) -> int:
        """The last step metrics.jsonl logs (0 when it logs none)."""
        steps = [r["step"] for r in _read_rows(os.path.join(workdir, "metrics.jsonl")) if isinstance(r.get("step"), int)]
        return max(steps, default=0)

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
        line = json.dumps(row) + "\n"
        with writing(self.path, len(line)), open(self.path, "a") as f:
            f.write(line)
        self.rows.append(row)
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"train/{key}", value, row["step"])

    def image(self, tag: str, grid, step: int) -> None:
        """A (H, W, C) uint8 image (a sample grid) at `step`."""
        self.writer.add_image(tag, grid, step, dataformats="HWC")

    def close(self) -> None:
        try:
            self.writer.close()
        except OSError as e:
            if not is_disk_full(e):
                raise
            _abandon(self.writer)
            raise disk_full(self.writer.logdir, None) from None

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
        with writing(png_path):
            fig.savefig(png_path, dpi=100)


def log_eval(workdir: str, step: int, rows: dict) -> None:
    """The evaluation's figures (the samples' row: mean over seeds) as TensorBoard scalars."""
    from tensorboardX import SummaryWriter

    with SummaryWriter(os.path.join(workdir, "tensorboard")) as writer:
        for name, value in rows.get("samples", {}).items():
            if isinstance(value, dict) and "mean" in value:
                writer.add_scalar(f"eval/{name}", value["mean"], step)


def _read_rows(path: str) -> list[dict]:
    """The rows of a metrics.jsonl (none if it is missing); a line cut by a kill is skipped."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def _abandon(writer) -> None:
    """Stop a TensorBoard writer whose last flush failed for lack of space without writing again:
    tensorboardX would otherwise retry the flush at exit and print the same failure twice more
    (its exit hook and its writer thread)."""
    for file_writer in list((getattr(writer, "all_writers", None) or {}).values()):
        events = getattr(file_writer, "event_writer", None)
        worker = getattr(events, "_worker", None)
        if worker is not None:
            worker.stop()
        if events is not None:
            events._closed = True
