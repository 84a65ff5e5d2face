"""The training report: a Markdown page and PNG plots that travel inside the artifact.

Plots: loss curves (train and validation per epoch, the kept epoch marked), the validation
score distribution with the calibrated threshold, and expected vs observed readings of one
stream's validation tail as the engine scored them. matplotlib runs on the Agg backend: no
display is needed on a trainer node.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from detector.core.timefmt import iso_ms
from training.budgetreport import rules_of
from training.calibrate import Calibration, EngineRun

__all__ = ["write_report"]


def _loss_plot(history: Sequence[dict[str, float]], best_epoch: int, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], label="train")
    ax.plot(ep, [h["val_loss"] for h in history], label="validation (held-out tails)")
    ax.axvline(best_epoch, color="grey", linestyle=":", label=f"kept: epoch {best_epoch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("weighted MSE, scaler units")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _score_plot(cal: Calibration, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    scores = cal.scores[np.isfinite(cal.scores)]
    ax.hist(scores, bins=100, log=True, color="tab:blue")
    thr = cal.scoring.threshold
    ax.axvline(thr, color="tab:red", label=f"threshold {thr:.2f}")
    ax.set_xlabel("score (z-value of the raw error)")
    ax.set_ylabel("validation readings")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _recon_plot(
    run: EngineRun, values: np.ndarray, features: Sequence[str], title: str, path: Path
) -> None:
    """``values`` (T, F) observed raw readings aligned with ``run`` (one stream)."""
    f = len(features)
    fig, axes = plt.subplots(f, 1, figsize=(7, 1.6 * f + 0.6), sharex=True, squeeze=False)
    x = run.index
    for j, ax in enumerate(axes[:, 0]):
        ax.plot(x, values[:, j], lw=0.8, label="observed")
        ax.plot(x, run.expected[:, j], lw=0.8, label="expected")
        for k in x[run.opened].tolist():  # incidents the clean held-out history opened
            ax.axvline(k, color="red", lw=0.8, alpha=0.7)
        ax.set_ylabel(features[j], fontsize=8)
    axes[0, 0].set_title(title, fontsize=9)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("reading index in the stream")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _budget_lines(summary: dict[str, Any]) -> list[str]:
    """The false-alarm budget section, when the calibration had one."""
    rep = summary.get("metrics", {}).get("calibration", {}).get("budget_report")
    if not rep:
        return []
    rules = ", ".join(f"{k} {v}" for k, v in rep["by_rule"].items()) or "none"
    levels = ", ".join(f"{k} {v}" for k, v in rep["thresholds"].items())
    return [
        "## False-alarm budget",
        "",
        f"Aimed at {rep['budget_per_10k']} incidents per stream per 10,000 clean readings: "
        f"the held-out history ({rep['streams']} streams, {rep['readings']} readings, each "
        f"from a cold state, every rule on) opened {rep['incidents_per_10k']} per 10,000 "
        f"({rules}); {rep['cold_incidents_per_10k']} per 10,000 in the streams' first 1,000 "
        f"readings. Thresholds: {levels}; warm-up {rep['warmup']} readings.",
        "",
        *(
            [
                "**The history opened more than four times the budget**: it is too short or "
                "too irregular to calibrate on; expect more false alarms than asked, or train "
                "on more clean history.",
                "",
            ]
            if rep.get("over_budget")
            else []
        ),
        *_outlier_lines(rep),
    ]


def _outlier_lines(rep: dict[str, Any]) -> list[str]:
    """The history's events left out of the thresholds' fit, for the operator to check."""
    events = rep.get("outliers") or []
    if not events:
        return []
    total = max(int(rep.get("outliers_total", 0)), len(events))
    more = f" (the first {len(events)} listed)" if total > len(events) else ""
    return [
        f"The history held {total} event(s) far beyond the rest of its tail{more}, left out "
        "of the thresholds' fit as anomalies in it — check the training data there:",
        "",
        *(f"- {o['stream_id']} at {iso_ms(o['ts_ms'])}: {rules_of(o)}" for o in events),
        "",
    ]


def write_report(
    out_dir: Path,
    *,
    history: Sequence[dict[str, float]],
    best_epoch: int,
    calibration: Calibration,
    examples: Sequence[tuple[str, EngineRun, np.ndarray]],
    features: Sequence[str],
    summary: dict[str, Any],
) -> dict[str, Path]:
    """Write ``index.md`` and plots under ``out_dir``; returns artifact name -> file path.

    ``examples`` holds (stream id, its engine run over the validation tail, observed raw
    values (T, F)) for the reconstruction plots. Names are relative to the artifact, e.g.
    ``report/loss.png``, ready for ``detector.artifacts.publish(files=...)``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    _loss_plot(history, best_epoch, out_dir / "loss.png")
    files["report/loss.png"] = out_dir / "loss.png"
    _score_plot(calibration, out_dir / "scores.png")
    files["report/scores.png"] = out_dir / "scores.png"
    recon = []
    for k, (sid, run, values) in enumerate(examples):
        name = f"reconstruction-{k}.png"
        _recon_plot(run, values, features, f"{sid}: validation tail", out_dir / name)
        files[f"report/{name}"] = out_dir / name
        recon.append(f"![{sid}]({name})")
    sc = calibration.scoring
    q: list[float] = (
        np.quantile(calibration.scores, [0.5, 0.99, 0.999]).tolist()
        if calibration.scores.size
        else []
    )
    lines = [
        "# Training report",
        "",
        "```json",
        json.dumps(summary, indent=2, default=str),
        "```",
        "",
        "## Loss",
        "",
        f"Kept epoch {best_epoch} (lowest validation loss).",
        "",
        "![loss](loss.png)",
        "",
        "## Validation scores and the threshold",
        "",
        f"Error prior: mean {sc.error_mean:.4f}, std {sc.error_std:.4f} (scaler units). "
        f"Threshold {sc.threshold:.3f}. Score quantiles 50/99/99.9%: "
        + ", ".join(f"{v:.2f}" for v in q)
        + f"; {float((calibration.scores >= sc.threshold).mean()):.4%} of validation "
        "readings reach the threshold.",
        "",
        "![scores](scores.png)",
        "",
        *_budget_lines(summary),
        "## Example reconstructions (expected vs observed, raw units)",
        "",
        "Held-out streams replayed live from a cold state; a red line is an incident opened.",
        "",
        *recon,
        "",
    ]
    (out_dir / "index.md").write_text("\n".join(lines))
    files["report/index.md"] = out_dir / "index.md"
    return files
