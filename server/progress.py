"""Progress lines of a run: one per round, and in a deployment one per exchange with the sites.

`fedvault simulate` prints them in its own process. In a deployment the ServerApp prints
them, and `fedvault run` shows them as it streams the run's log, so the coordinator sees
each stage as it ends and which sites answered it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

ProgressFn = Callable[[dict], None]


def print_progress(
    num_rounds: int, echo: Callable[[str], None] = print, stages: bool = False
) -> ProgressFn:
    """A progress function: a line per completed round; with `stages`, one per exchange."""
    started = time.monotonic()

    def report(event: dict) -> None:
        if event.get("kind") == "stage":
            if stages:
                echo(
                    f"round {event['round']:>3}/{num_rounds}  {event['stage']}: "
                    f"{event['answered']}/{event['asked']} sites answered in "
                    f"{event['seconds']:.2f}s"
                )
            return
        parts = [
            f"round {event['round']:>3}/{num_rounds}",
            f"test-acc {event['test-accuracy']:.4f}",
            f"loss {event['test-loss']:.4f}",
            f"sites {event['sites-trained']}",
        ]
        if event.get("sites-refused"):
            parts.append(f"refused {event['sites-refused']}")
        if "max-site-epsilon" in event:
            parts.append(f"max site-eps {event['max-site-epsilon']:.3f}")
        if event.get("client-epsilon") is not None:
            parts.append(f"client-eps {event['client-epsilon']:.3f}")
        if event.get("secagg-aborted"):
            parts.append("secagg ABORTED")
        parts.append(f"{event['seconds']:.1f}s (total {time.monotonic() - started:.0f}s)")
        echo("  ".join(parts))

    return report
