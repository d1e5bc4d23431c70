"""The two fixed costs removed from every flow run: what is sent and what is kept."""

from __future__ import annotations

import datetime as dt
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import prefect.flow_engine

import flows.batch_map  # noqa: F401  (declaring a flow applies the changes)
from tasks.core.startup import is_plain_json, plain_parameters, without_join


def test_every_declared_flow_runs_with_the_heartbeat_wrapper() -> None:
    assert getattr(prefect.flow_engine._send_heartbeats, "__batchflows__", False)


def test_the_heartbeat_context_is_prefects_own_without_the_join() -> None:
    calls: list[tuple[Any, bool]] = []

    @contextmanager
    def original(engine: Any, join_on_exit: bool = True) -> Any:
        calls.append((engine, join_on_exit))
        yield

    with without_join(original)("engine"):
        pass
    with without_join(original)("engine", join_on_exit=True):
        pass
    assert calls == [("engine", False), ("engine", False)]


def test_plain_json_is_recognised() -> None:
    assert is_plain_json({"a": [1, 2.5, "x", None, True, {"b": []}]})
    assert not is_plain_json(Path("x"))
    assert not is_plain_json({"when": dt.date(2026, 1, 1)})
    assert not is_plain_json({1: "int key"})


class _Flow:
    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        return {k: f"prefect:{v}" for k, v in parameters.items()}


def test_plain_parameters_go_as_they_are_and_others_through_prefect() -> None:
    f = _Flow()
    plain_parameters(f)
    assert f.serialize_parameters({"n": 1, "items": [{"a": "b"}]}) == {"n": 1, "items": [{"a": "b"}]}
    assert f.serialize_parameters({"n": 1, "path": Path("x")}) == {"n": "prefect:1", "path": "prefect:x"}


def test_a_flow_run_still_records_its_parameters_on_the_server() -> None:
    import asyncio

    from prefect import get_client

    from flows.batch_map import batch_map

    summary = batch_map([1, 2, 3], "tests.handlers:double", chunk_size=2, run_key="params-sent")
    assert summary.ok

    async def parameters() -> dict[str, Any]:
        async with get_client() as client:
            run = await client.read_flow_run(summary.flow_run_id)
            return run.parameters

    sent = asyncio.run(parameters())
    assert sent["chunk_size"] == 2 and sent["run_key"] == "params-sent" and sent["handler"] == "tests.handlers:double"
