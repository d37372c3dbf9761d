"""Baseline C: the original example's design, one activity per record gathered in one workflow."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import httpx

    from services import constants as c

BASELINE_WORKFLOW = "PerRecordBaseline"


class PerRecordActivities:
    def __init__(self, serve_url: str, token: str):
        self._client = httpx.AsyncClient(
            base_url=serve_url, headers={c.AUTH_HEADER: f"{c.AUTH_SCHEME} {token}"}, timeout=60
        )

    @activity.defn(name="predict_one")
    async def predict_one(self, record: Any) -> Any:
        response = await self._client.post(c.INFERENCE_ROUTE, json=record)
        response.raise_for_status()
        return response.json()["prediction"]

    async def aclose(self) -> None:
        await self._client.aclose()


@workflow.defn(name=BASELINE_WORKFLOW)
class PerRecordBaseline:
    @workflow.run
    async def run(self, records: list[Any]) -> int:
        results = await asyncio.gather(
            *(
                workflow.execute_activity("predict_one", record, start_to_close_timeout=timedelta(minutes=5))
                for record in records
            )
        )
        return len(results)
