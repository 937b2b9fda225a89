"""Pictures of an evaluation: how each task's loss and uncertainty moved during M2GRL's round, how
the methods compare at each K, and what Recommend's diversity does to HR@20 and to the categories
among the top 20. Rendered headless (Agg) to a PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt

from m2grl.lab.evaluation import KS, RECOMMENDED, DiversitySweep, EvalReport


def plot_evaluation(report: EvalReport, path: Path) -> Path:
    swept = report.sweep is not None and not report.sweep.skipped
    figure, axes = plt.subplots(1, 4 if swept else 3, figsize=(21 if swept else 16, 4.8))
    loss_ax, sigma_ax, hit_ax = axes[:3]
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
    if swept:
        assert report.sweep is not None
        _plot_sweep(axes[3], report.sweep, len(report.seeds))
    figure.suptitle(f"m2grl eval {report.dataset} (views: {', '.join(report.views)})")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _plot_sweep(hit_ax: plt.Axes, sweep: DiversitySweep, seeds: int) -> None:
    """HR@20 and the distinct categories among the top 20 against Recommend's diversity, on two scales."""
    rows = sweep.summary()
    diversities = [row["diversity"] for row in rows]
    hr, distinct = f"hr@{RECOMMENDED}", f"distinct@{RECOMMENDED}"
    spread = seeds > 1
    hit_ax.errorbar(diversities, [row[hr] for row in rows], yerr=[row[hr + "_sd"] for row in rows] if spread else None,
                    marker="o", capsize=2, color="tab:blue", label=f"HR@{RECOMMENDED}")
    hit_ax.set(title=f"Recommend (M2GRL), top {RECOMMENDED} by diversity", xlabel="diversity",
               ylabel=f"HR@{RECOMMENDED}", xticks=diversities)
    values_ax = hit_ax.twinx()
    values_ax.errorbar(diversities, [row[distinct] for row in rows],
                       yerr=[row[distinct + "_sd"] for row in rows] if spread else None, marker="s", capsize=2,
                       color="tab:orange", label=f"distinct {sweep.view} values")
    values_ax.set_ylabel(f"distinct {sweep.view} values in the top {RECOMMENDED}")
    handles = [*hit_ax.get_legend_handles_labels()[0], *values_ax.get_legend_handles_labels()[0]]
    hit_ax.legend(handles=handles, fontsize="small", loc="lower right")
    hit_ax.grid(alpha=0.3)
