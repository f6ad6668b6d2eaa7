"""Metrics a person can plot: `metrics.jsonl` (one JSON object per logged step) and `loss.png`."""

from __future__ import annotations

import json
import os


class MetricsLog:
    def __init__(self, workdir: str, *, resume_step: int = 0):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.rows = []
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

    def write(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def plot(self, png_path: str) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [r for r in self.rows if "loss" in r]
        if not rows:
            return
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
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
        plt.close(fig)
