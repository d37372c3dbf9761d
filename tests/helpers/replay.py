"""Recorded workflow histories (``make record-histories``) and replaying them with the SDK's
``Replayer``: no server, the worker's own data converter and sandbox."""

from __future__ import annotations

import json
import re
from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from services.local.paths import REPO_ROOT
from services.worker.config import DATA_CONVERTER

HISTORIES = REPO_ROOT / "tests" / "replay" / "histories"
# Core's reason inside the SDK's NondeterminismError, e.g. "[TMPRL1100] Nondeterminism error:
# Timer machine does not handle this event: HistoryEvent(id: 5, ActivityTaskScheduled)".
_REASON = re.compile(r'message: "((?:[^"\\]|\\.)*)"')


def history_files() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


def scenario(path: Path) -> str:
    """``file-continue-as-new.run2.json`` -> ``file-continue-as-new``."""
    return path.name.split(".")[0]


def load_history(path: Path) -> WorkflowHistory:
    """A history as ``WorkflowHistory.to_json()`` or ``temporal workflow show --output json``
    wrote it; the workflow id from its first event (it decides e.g. a retry's folder)."""
    text = path.read_text()
    started = json.loads(text)["events"][0]["workflowExecutionStartedEventAttributes"]
    return WorkflowHistory.from_json(started.get("workflowId") or path.stem, text)


async def replay(history: WorkflowHistory, workflow: type) -> None:
    """Replay ``history`` on ``workflow``; raises the SDK's error on any nondeterminism."""
    replayer = Replayer(workflows=[workflow], data_converter=DATA_CONVERTER)
    await replayer.replay_workflow(history)


def reason(error: BaseException) -> str:
    """The replay failure in one line: Core's message naming the event, when there is one."""
    found = _REASON.search(str(error))
    return found.group(1) if found else str(error)
