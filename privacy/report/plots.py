"""The report's figures as PNG bytes: epsilon over rounds, model utility, the audit's ROC.

Drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display), so
reports can be written from a server process or a test. PNGs carry no timestamp or software
tag, so the same report data gives the same bytes on the same matplotlib.
"""

from __future__ import annotations

import io
from typing import Any

from privacy.report.rows import eps, grouped

MAX_LEGEND = 12  # more lines than this get no legend: the table names every site

COLORS = ("#1f5fa8", "#d9822b", "#2a9d5c", "#b23a48", "#7a4fb3", "#4a8c8c", "#8c6d31", "#555555")


def _figure(width: float = 7.5, height: float = 3.4) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _style(ax: Any, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, color="#e4e4e4", linewidth=0.8)
    ax.spines[["top", "right"]].set_visible(False)


def _curve(site: dict[str, Any]) -> tuple:
    """What a site's line shows: its limit and its epsilon after each round, as printed."""
    return (
        site["max_epsilon"],
        tuple((r["round"], eps(r["epsilon_cumulative"])) for r in site["rounds"]),
    )


def epsilon_plot(sample: dict[str, Any]) -> bytes | None:
    """Cumulative epsilon per group of sites with the same curve, each limit dashed.

    One line per site would be unreadable at 100 sites; sites whose epsilons print the same
    share a line, labelled with its first site and how many others follow it.
    """
    sites = {s["site"]: s for s in sample["sites"] if s["rounds"]}
    if not sites:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    limits = set()
    groups = grouped(sites.values(), _curve)
    for i, group in enumerate(groups):
        site = sites[group["names"][0]]
        color = COLORS[i % len(COLORS)]
        rounds = [r["round"] for r in site["rounds"]]
        values = [r["epsilon_cumulative"] for r in site["rounds"]]
        others = len(group["names"]) - 1
        label = site["site"] + (f" and {others} more" if others else "")
        ax.plot(rounds, values, marker="o", color=color, label=label)
        if site["max_epsilon"] is not None and site["max_epsilon"] not in limits:
            limits.add(site["max_epsilon"])
            ax.axhline(site["max_epsilon"], color=color, linestyle="--", linewidth=1)
            ax.annotate(
                f"limit {site['max_epsilon']:g}",
                (rounds[0], site["max_epsilon"]),
                textcoords="offset points",
                xytext=(2, 4),
                fontsize=8,
                color=color,
            )
    ax.set_ylim(bottom=0)
    ax.xaxis.get_major_locator().set_params(integer=True)
    name = sample["accountant"]["name"].upper()
    _style(ax, "round", f"cumulative epsilon ({name})")
    ax.set_title("Sample-level epsilon per site (all runs on the same data)", fontsize=10)
    if len(groups) <= MAX_LEGEND:
        ax.legend(fontsize=8, ncols=min(4, len(groups)), loc="lower right")
    return _png(fig)


def utility_plot(utility: dict[str, Any]) -> bytes | None:
    """Global test accuracy and the sites' own evaluation accuracy per round."""
    rounds = utility["rounds"]
    if not rounds:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    x = [r["round"] for r in rounds]
    ax.plot(
        x,
        [r["test_accuracy"] for r in rounds],
        marker="o",
        color=COLORS[0],
        label="global model, server test set",
    )
    client = [
        (r["round"], r["client_eval_accuracy"])
        for r in rounds
        if r["client_eval_accuracy"] is not None
    ]
    if client:
        ax.plot(
            *zip(*client, strict=True),
            marker="s",
            color=COLORS[1],
            label="sites' validation data (weighted mean)",
        )
    ax.set_ylim(0, 1)
    ax.xaxis.get_major_locator().set_params(integer=True)
    _style(ax, "round (0 = initial model)", "accuracy")
    ax.set_title("Model utility per round", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def audit_plot(audit: dict[str, Any] | None) -> bytes | None:
    """ROC of the membership-inference attack on log axes, where low FPR is visible."""
    if not audit or not audit.get("roc"):
        return None
    fpr = audit["roc"]["fpr"]
    tpr = audit["roc"]["tpr"]
    points = [(f, t) for f, t in zip(fpr, tpr, strict=True) if f > 0 and t > 0]
    if not points:
        return None
    fig = _figure(5.0, 3.6)
    ax = fig.add_subplot()
    ax.plot(*zip(*points, strict=True), color=COLORS[3], label=f"attack (AUC {audit['auc']:.3f})")
    floor = min(p[0] for p in points)
    ax.plot([floor, 1], [floor, 1], color="#888888", linestyle=":", label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _style(ax, "false positive rate", "true positive rate")
    ax.set_title("Membership inference on the final model", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def all_plots(report: dict[str, Any]) -> dict[str, bytes]:
    """Every plot the report has data for, by file name."""
    plots = {
        "epsilon.png": epsilon_plot(report["sample_level_dp"]),
        "utility.png": utility_plot(report["utility"]),
        "audit-roc.png": audit_plot(report["audit"]),
    }
    return {name: data for name, data in plots.items() if data is not None}
