"""A Serve outage as a file batch lives through it: pure, deterministic functions the workflow
calls (no clock, no randomness of their own), so they replay identically.

A shard that gives up its in-activity retries reports ``Failure.SERVE_UNAVAILABLE``; the
workflow then waits, checks Serve after each wait (``wait_before_check``), and runs the shard
again once Serve answers. The outage ends when a shard completes; if it lasts longer than the
batch's ``max_serve_outage_s``, the batch fails with ``outage_too_long``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from temporalio.exceptions import ActivityError, ApplicationError

from services.constants import ENV_SERVE_URL
from services.errors import Failure


@dataclass
class Outage:
    since: datetime  # when a shard first found Serve unavailable
    attempts: int = 0  # shard attempts and checks that found it unavailable since
    checks: int = 0  # checks of Serve made (the waits grow with these)
    reason: str = ""  # the last one's
    waiting: bool = True  # False once a check found Serve answering (shards run again)


def wait_before_check(checks: int, initial_s: float, max_s: float, left_s: float) -> float:
    """Seconds to wait before the next check of Serve after ``checks`` checks in this
    outage: doubling from ``initial_s`` up to ``max_s``, and never past the outage's cap
    (``left_s`` seconds away) so that the batch fails on time. No jitter: one check per batch,
    not one per shard, so there is no herd to spread."""
    exponent = min(max(checks, 0), 32)  # 2**32 times any initial is past any cap
    return max(0.0, min(initial_s * 2**exponent, max_s, left_s))


def serve_unavailable(error: BaseException) -> str | None:
    """The reason, if ``error`` is a shard activity that gave up because Serve stayed
    unavailable (its failure's type, never its text), else None."""
    cause = error.cause if isinstance(error, ActivityError) else None
    if isinstance(cause, ApplicationError) and cause.type == Failure.SERVE_UNAVAILABLE:
        return cause.message
    return None


def duration_text(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def outage_too_long(outage: Outage, now: datetime, max_outage_s: float) -> ApplicationError:
    """The batch's failure once Serve has been unavailable past ``max_outage_s``: how long, since
    when, and what to check."""
    down = (now - outage.since).total_seconds()
    return ApplicationError(
        f"Serve was unavailable for {duration_text(down)} (since "
        f"{outage.since:%Y-%m-%d %H:%M:%S} UTC, {outage.attempts} attempts; last: {outage.reason}), "
        f"longer than tuning.max_serve_outage_s={max_outage_s:g}: check that the Serve application "
        f"is deployed and healthy (the RayService's status, its Ray head and proxy pods) and that the "
        f"worker reaches it at {ENV_SERVE_URL}; then `batch-inference resume <workflow-id>` takes the "
        "batch up where it stopped",
        type=Failure.SERVE_OUTAGE_TOO_LONG,
        non_retryable=True,
    )
