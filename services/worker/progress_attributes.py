"""Per-batch progress published by the workflow itself, as two custom search attributes, so one
visibility list call reads every running batch's progress without a query per batch.

- ``ProgressPublisher`` (workflow side): upserts ``BatchInferenceStatus`` and a compact snapshot
  ``BatchInferenceProgress`` (``PublishedProgress``) when the batch starts, when its status
  changes, at most every ``tuning.progress_every_s`` of workflow time as shards finish, and at the end.
  An upsert of an attribute the namespace does not know fails the workflow task (and the batch
  would hang retrying it), so it publishes only when the plan activity (its result is in the
  history, and carried over continue-as-new) answered that both are registered with their types.
- ``ProgressAttributesCheck`` (activity side): that answer, from the operator service.
- ``register``: add them (what ``batch-inference progress-exporter --register-search-attributes``
  does; the dev server registers them with ``start-dev --search-attribute``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field
from temporalio import workflow
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey, TypedSearchAttributes

from services import constants as c
from services.worker.accounting import per_second
from services.worker.contracts import Progress, ProgressStatus

log = logging.getLogger(__name__)

STATUS_KEY = SearchAttributeKey.for_keyword(c.PROGRESS_STATUS_ATTRIBUTE)
SNAPSHOT_KEY = SearchAttributeKey.for_keyword(c.PROGRESS_SNAPSHOT_ATTRIBUTE)
# New commands (upserts): old histories replay without them.
PUBLISH_PROGRESS_PATCH = "publish-progress"
# SQL visibility keeps a custom Keyword in a VARCHAR(255) column: the snapshot stays below it.
SNAPSHOT_MAX_CHARS = 255
_TYPES = {"Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD}
# Fields PublishedProgress shares with Progress as they are.
_SAME = {"total_records", "succeeded", "failed", "shards_total", "shards_done", "shards_running"}
_SAME |= {"run", "serve_attempts"}


class PublishedProgress(BaseModel):
    """A batch's ``Progress`` as published (short keys, times as epoch seconds: it must fit in a
    Keyword); ``to_progress`` brings the elapsed time up to ``now``."""

    model_config = ConfigDict(populate_by_name=True)

    total_records: int = Field(0, alias="t")
    succeeded: int = Field(0, alias="ok")
    failed: int = Field(0, alias="f")
    shards_total: int = Field(0, alias="st")
    shards_done: int = Field(0, alias="sd")
    shards_running: int = Field(0, alias="sr")
    run: int = Field(1, alias="r")
    elapsed_s: float = Field(0.0, alias="e", description="at published_at")
    waiting_for_serve_since: float | None = Field(None, alias="w", description="epoch seconds")
    serve_attempts: int = Field(0, alias="wa")
    published_at: float = Field(alias="at", description="workflow time, epoch seconds")

    @classmethod
    def of(cls, p: Progress, at: datetime) -> PublishedProgress:
        since = p.waiting_for_serve_since
        return cls(
            **p.model_dump(include=_SAME),
            elapsed_s=round(p.elapsed_s, 1),
            waiting_for_serve_since=None if since is None else round(since.timestamp(), 3),
            published_at=round(at.timestamp(), 3),
        )

    def encode(self) -> str:
        text = self.model_dump_json(by_alias=True, exclude_defaults=True)
        assert len(text) <= SNAPSHOT_MAX_CHARS, text
        return text

    def to_progress(self, status: ProgressStatus, now: datetime | None = None) -> Progress:
        moving = status in ("running", "waiting_for_serve", "finalizing")
        since_published = (now or datetime.now(UTC)).timestamp() - self.published_at
        since = self.waiting_for_serve_since
        return Progress(
            status=status,
            **self.model_dump(include=_SAME),
            elapsed_s=round(self.elapsed_s + (max(0.0, since_published) if moving else 0.0), 3),
            records_per_second=per_second(self.succeeded + self.failed, self.elapsed_s),
            waiting_for_serve_since=None if since is None else datetime.fromtimestamp(since, UTC),
        )


def read(attributes: TypedSearchAttributes, now: datetime | None = None) -> Progress | None:
    """The progress a workflow published (its search attributes, as a listing or a describe
    carries them), or None if it published none (an inline batch, one started before this
    release, or a namespace without the attributes)."""
    status, snapshot = attributes.get(STATUS_KEY), attributes.get(SNAPSHOT_KEY)
    if not status or not snapshot:
        return None
    try:
        return PublishedProgress.model_validate_json(snapshot).to_progress(status, now)  # type: ignore[arg-type]
    except ValueError as exc:  # pydantic's ValidationError, e.g. an unknown status
        log.debug("unreadable published progress %r: %s", snapshot, exc)
        return None


# --- workflow side ------------------------------------------------------------------------------


class ProgressPublisher:
    """Publishes ``progress()`` as search attributes, if the namespace has them (see module doc)."""

    def __init__(self, progress: Callable[[], Progress], every_s: float):
        # Each publication is one history event and one visibility write: shards finishing
        # faster than ``every_s`` publish together, and what a burst leaves unpublished goes when
        # the interval ends (a timer, only then).
        self._progress, self.every_s = progress, every_s
        self.enabled = False
        self._last_at: datetime | None = None
        self._last_status: str | None = None
        self._published: tuple[object, ...] | None = None  # the counts last published

    def enable(self, registered: bool) -> None:
        """Once the run's state is known: publish if the plan found the attributes registered
        (its answer is in the history) and this is not the replay of an older history. Asked
        only when registered: a history without them carries no marker (Temporal's time-skipping
        test server fails legacy queries that replay a history with a second patch marker)."""
        self.enabled = registered and workflow.patched(PUBLISH_PROGRESS_PATCH)

    def due_in(self) -> float | None:
        """Seconds of workflow time until progress held back by the interval may be published;
        None if nothing is held back (the caller then waits without a timer)."""
        if not self.enabled or self._last_at is None or _counts(self._progress()) == self._published:
            return None
        elapsed = (workflow.now() - self._last_at).total_seconds()
        return max(self.every_s - elapsed, 0.001)

    def publish(self, force: bool = False) -> None:
        """Upsert the progress: always on ``force`` or a status change, else at most every
        ``every_s`` of workflow time."""
        if not self.enabled:
            return
        now, p = workflow.now(), self._progress()
        if (
            not force
            and p.status == self._last_status
            and self._last_at is not None
            and (now - self._last_at).total_seconds() < self.every_s
        ):
            return
        self._last_at, self._last_status, self._published = now, p.status, _counts(p)
        workflow.upsert_search_attributes(
            [STATUS_KEY.value_set(p.status), SNAPSHOT_KEY.value_set(PublishedProgress.of(p, now).encode())]
        )


def _counts(p: Progress) -> tuple[object, ...]:
    """What a published snapshot says, but the times (which change by themselves)."""
    return (p.status, p.succeeded, p.failed, p.shards_done, p.shards_running, p.waiting_for_serve_since)


# --- activity side ------------------------------------------------------------------------------


async def missing(client: Client, namespace: str) -> dict[str, str]:
    """The progress attributes ``namespace`` lacks (or has with another type): name -> type."""
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    have = {**listed.system_attributes, **listed.custom_attributes}
    return {
        name: kind for name, kind in c.PROGRESS_SEARCH_ATTRIBUTES.items() if have.get(name) != _TYPES[kind]
    }


async def register(client: Client, namespace: str) -> dict[str, str]:
    """Add the progress attributes ``namespace`` lacks; returns those it added. Needs the
    operator service's admin rights (a self-hosted server; Temporal Cloud: see README)."""
    lacking = await missing(client, namespace)
    if lacking:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=namespace, search_attributes={n: _TYPES[k] for n, k in lacking.items()}
            )
        )
    return lacking


class ProgressAttributesCheck:
    """Whether the namespace has the progress attributes, as the plan activity asks it. A yes is
    kept for the process's life; a no (or an error: no rights to list them) is asked again after
    ``recheck_s``, so attributes registered later are used by batches planned later."""

    def __init__(self, client: Client, namespace: str, recheck_s: float = 60.0):
        self.client, self.namespace, self.recheck_s = client, namespace, recheck_s
        self._yes = False
        self._asked_at: float | None = None
        self._lock = asyncio.Lock()  # plans starting together wait for one answer

    async def __call__(self) -> bool:
        async with self._lock:
            if self._yes or (
                self._asked_at is not None and time.monotonic() - self._asked_at < self.recheck_s
            ):
                return self._yes
            self._asked_at = time.monotonic()
            self._yes = await self._ask()
            return self._yes

    async def _ask(self) -> bool:
        try:
            lacking = await missing(self.client, self.namespace)
        except Exception as exc:  # e.g. PermissionDenied: batches run all the same, unpublished
            log.warning(
                "cannot list search attributes of %s (%s): batches publish no progress", self.namespace, exc
            )
            return False
        if lacking:
            log.warning(
                "namespace %s lacks search attributes %s: batches publish no progress (README "
                "'Progress at scale' says how to add them)",
                self.namespace,
                ", ".join(f"{n}={k}" for n, k in lacking.items()),
            )
        return not lacking
