"""Pictures of an evaluation: how each task's loss and uncertainty moved during M2GRL's round, and
how the methods compare at each K. Rendered headless (Agg) to a PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt

from m2grl.lab.evaluation import KS, EvalReport


def plot_evaluation(report: EvalReport, path: Path) -> Path:
    figure, (loss_ax, sigma_ax, hit_ax) = plt.subplots(1, 3, figsize=(16, 4.8))
    curve = report.methods["m2grl"].curve if "m2grl" in report.methods else []
    steps = [point["step"] for point in curve]
    tasks = sorted({task for point in curve for task in point["loss"]})
    for task in tasks:
        loss_ax.plot(steps, [point["loss"].get(task) for point in curve], label=task)
        sigma_ax.plot(steps, [point["sigma2"].get(task) for point in curve], label=task)
    loss_ax.set(title="M2GRL loss per task (smoothed)", xlabel="step", ylabel="loss")
    sigma_ax.set(title="M2GRL uncertainty σ² per task", xlabel="step", ylabel="σ²", yscale="log")
    for axis in (loss_ax, sigma_ax):
        if tasks:
            axis.legend(fontsize="small")
        axis.grid(alpha=0.3)

    names = list(report.methods)
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        scores, spread = report.methods[name].scores, report.methods[name].sd
        positions = [k_index + i * width for k_index in range(len(KS))]
        bars = hit_ax.bar(positions, [scores[f"hr@{k}"] for k in KS], width, label=name,
                          yerr=[spread.get(f"hr@{k}", 0.0) for k in KS] if len(report.seeds) > 1 else None,
                          capsize=2)
        hit_ax.bar_label(bars, fmt="%.3f", fontsize="x-small")
    hit_ax.set_xticks([k_index + width * (len(names) - 1) / 2 for k_index in range(len(KS))],
                      [f"HR@{k}" for k in KS])
    over = f", mean ± sd of {len(report.seeds)} seeds" if len(report.seeds) > 1 else ""
    hit_ax.set(title=f"next-item hit rate, {report.cases} test users{over}", ylabel="hit rate")
    hit_ax.legend(fontsize="small")
    hit_ax.grid(axis="y", alpha=0.3)
    figure.suptitle(f"m2grl eval {report.dataset} (views: {', '.join(report.views)})")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
