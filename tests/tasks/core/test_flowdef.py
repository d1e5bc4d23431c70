"""One declaration per flow: the Prefect flow, the UI form, validation and the Python function derive from it."""

from __future__ import annotations

import inspect
import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools import ValidationError, validate

from flows.api_bulk import api_bulk, api_bulk_flow
from flows.api_extract import api_extract, api_extract_flow
from flows.batch_map import BatchMapParams, batch_map, batch_map_flow
from flows.db_migrate import db_migrate, db_migrate_flow
from flows.etl_demo import etl_demo, etl_demo_flow
from flows.file_transform import file_transform, file_transform_flow
from flows.replay import replay_dead_letters, replay_dead_letters_flow
from tasks.core.errors import ConfigError, InputNotFound, SettingError, SourceError
from tasks.core.flowdef import RunFailed, setting_fields

ROOT = Path(__file__).resolve().parents[3]
FLOWS = [(batch_map_flow, batch_map), (replay_dead_letters_flow, replay_dead_letters), (api_bulk_flow, api_bulk),
         (api_extract_flow, api_extract), (file_transform_flow, file_transform), (db_migrate_flow, db_migrate),
         (etl_demo_flow, etl_demo)]


@pytest.mark.parametrize(("prefect_flow", "entry"), FLOWS, ids=lambda f: getattr(f, "name", ""))
def test_every_parameter_has_a_description_in_the_ui_form_and_one_python_signature(prefect_flow: Any,
                                                                                    entry: Any) -> None:
    schema = parameter_schema(prefect_flow).model_dump()
    props = schema["properties"]
    undescribed = sorted(name for name, prop in props.items() if not prop.get("description"))
    assert not undescribed, f"{prefect_flow.name}: no description in the UI form for {undescribed}"
    tagged = sorted(name for name, prop in props.items() if "<" in prop["description"])
    assert not tagged, f"{prefect_flow.name}: the UI drops <...> from descriptions of {tagged}"
    python = inspect.signature(entry).parameters
    writes_parts = prefect_flow.name not in ("db-migrate", "etl-demo")  # those write tables
    extras = ["raise_on_failure", *(["collect"] if writes_parts else [])]
    assert list(python) == [*props, *extras]  # the same parameters, in the same order
    for name, prop in props.items():
        default = python[name].default
        assert default is inspect.Parameter.empty or prop.get("default") == default or default is None, name


# names that mean different things in different flows (what a source or an output is depends on the flow; what
# marks "new" for an incremental run: a column, a query parameter and a record field, files)
DIFFERENT_MEANINGS = ("source", "output", "handler", "transform", "output_format", "table", "incremental")


def test_shared_knobs_have_one_type_and_one_set_of_bounds_everywhere() -> None:
    seen: dict[str, dict[str, Any]] = {}
    for prefect_flow, _ in FLOWS:
        for name, prop in parameter_schema(prefect_flow).model_dump()["properties"].items():
            shape = {k: prop.get(k) for k in ("type", "minimum", "maximum", "exclusiveMinimum", "enum", "anyOf")}
            if name in setting_fields(prefect_flow.spec.model):  # null: the setting; a flow may give a fixed default
                (shape,) = [{k: b.get(k) for k in shape} for b in prop["anyOf"] if b != {"type": "null"}]
            if name in seen and name not in DIFFERENT_MEANINGS:
                assert shape == seen[name], f"{name} differs between flows: {shape} != {seen[name]}"
            seen.setdefault(name, shape)
    assert seen["chunk_size"]["minimum"] == 1 and seen["max_concurrency"]["maximum"] == 1024


@pytest.mark.parametrize("prefect_flow", [f for f, _ in FLOWS], ids=lambda f: f.name)
def test_a_deployment_run_may_send_null_for_a_parameter_whose_default_is_a_setting(prefect_flow: Any) -> None:
    """Their schema was {type: integer, default: null}: the server refused `--param chunk_size=null` (or a UI form
    sending its untouched default) with "None is not of type 'integer'", while the flow takes None as 'use the
    setting'. The schema is the one a deployment registers; the check is the one the server runs on a new run."""
    schema = parameter_schema(prefect_flow).model_dump_for_openapi()
    props = schema["properties"]
    for name, prop in props.items():  # every default passes its own schema
        if "default" in prop:
            validate({name: prop["default"]}, schema, raise_on_error=True, ignore_required=True)
    for name, setting in setting_fields(prefect_flow.spec.model).items():
        assert {"type": "null"} in props[name]["anyOf"] and props[name]["default"] is None, name
        assert f"Default (null): the {setting.env} setting (" in props[name]["description"], name
        validate({name: None}, schema, raise_on_error=True, ignore_required=True)
        with pytest.raises(ValidationError, match=name):  # the bounds still hold for a given value
            validate({name: 0}, schema, raise_on_error=True, ignore_required=True)


def test_a_flow_run_given_null_for_a_setting_parameter_uses_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHFLOWS_CHUNK_SIZE", "3")
    monkeypatch.setenv("BATCHFLOWS_MAX_CONCURRENCY", "2")
    params = {"source": list(range(10)), "handler": "tests.handlers:double", "chunk_size": None,
              "max_concurrency": None}  # what `prefect deployment run --param chunk_size=null` hands the flow
    state = batch_map_flow(**params, return_state=True)
    assert state.is_completed() and state.result().chunks_total == 4


def test_settings_are_the_defaults_and_parameters_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHFLOWS_CHUNK_SIZE", "3")
    assert BatchMapParams.parse({"source": [], "handler": "m:f"}).chunk_size == 3
    assert BatchMapParams.parse({"source": [], "handler": "m:f", "chunk_size": 7}).chunk_size == 7
    assert batch_map(list(range(10)), "tests.handlers:double").chunks_total == 4
    assert batch_map(list(range(10)), "tests.handlers:double", chunk_size=5).chunks_total == 2


def test_a_bad_parameter_gets_the_same_message_from_python_and_from_a_flow_run() -> None:
    expected = "invalid parameters: chunk_size: Input should be greater than or equal to 1 (got 0)"
    with pytest.raises(ConfigError) as refused:  # Python: before any flow run exists
        batch_map([1], "tests.handlers:double", chunk_size=0)
    assert str(refused.value) == expected
    # a deployment run (UI, CLI, prefect.yaml) calls the flow with JSON parameters: same check, same words
    state = batch_map_flow(source=[1], handler="tests.handlers:double", chunk_size=0, return_state=True)
    assert state.is_failed() and expected in (state.message or "")


def test_a_bad_setting_is_named_in_the_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHFLOWS_MAX_CONCURRENCY", "0")
    with pytest.raises(ConfigError, match=r"^bad setting: BATCHFLOWS_MAX_CONCURRENCY='0' is not accepted"):
        batch_map([1], "tests.handlers:double")
    monkeypatch.delenv("BATCHFLOWS_MAX_CONCURRENCY")
    monkeypatch.setenv("BATCHFLOWS_CHUNK_SIZE", "20000000")  # a valid setting, beyond the parameter's bound
    with pytest.raises(ConfigError, match=r"chunk_size: .*less than or equal to 10000000 .* from BATCHFLOWS_CHUNK_SIZE"):
        batch_map([1], "tests.handlers:double")


def test_a_bad_variable_read_for_a_default_is_named_as_the_variable_not_a_parameter(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """BATCHFLOWS_MEMORY_LIMIT_MB is no parameter: it was reported as 'invalid parameters: memory_limit_mb'."""
    monkeypatch.setenv("BATCHFLOWS_MEMORY_LIMIT_MB", "1.5GB")
    with pytest.raises(SettingError) as refused:
        BatchMapParams.parse({"source": [], "handler": "m:f"})  # chunk_size's default reads EngineSettings
    assert str(refused.value).startswith("bad setting: BATCHFLOWS_MEMORY_LIMIT_MB='1.5GB' is not accepted")
    assert "invalid parameters" not in str(refused.value)


def test_the_error_class_says_whether_a_setting_or_a_parameter_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decided by which field failed, not by the message's words (a variable's value may hold any text)."""
    monkeypatch.setenv("BATCHFLOWS_MEMORY_LIMIT_MB", "invalid parameters: 1")
    with pytest.raises(SettingError, match="BATCHFLOWS_MEMORY_LIMIT_MB='invalid parameters: 1'"):
        BatchMapParams.parse({"source": [], "handler": "m:f"})
    monkeypatch.delenv("BATCHFLOWS_MEMORY_LIMIT_MB")
    monkeypatch.setenv("BATCHFLOWS_CHUNK_SIZE", "20000000")  # the setting's value fails the parameter's bound
    with pytest.raises(SettingError, match="from BATCHFLOWS_CHUNK_SIZE"):
        BatchMapParams.parse({"source": [], "handler": "m:f"})
    for given in ({"chunk_size": 0}, {"retries": -1}):  # a parameter failed (beside the setting, or instead)
        with pytest.raises(ConfigError) as refused:
            BatchMapParams.parse({"source": [], "handler": "m:f", **given})
        assert type(refused.value) is ConfigError and f"{next(iter(given))}: " in str(refused.value)


def test_a_failed_run_raises_with_its_summary_unless_told_not_to() -> None:
    with pytest.raises(RunFailed) as failed:
        batch_map([3, 13], "tests.handlers:mixed", retries=0)
    assert failed.value.summary.failed == 2 and "min_success_ratio" in str(failed.value)
    summary = batch_map([3, 13], "tests.handlers:mixed", retries=0, raise_on_failure=False)
    assert summary.state == "Failed" and summary.failed == 2


def test_a_script_that_calls_a_failing_run_exits_nonzero(tmp_path: Path) -> None:
    script = tmp_path / "nightly.py"
    script.write_text("from flows.batch_map import batch_map\n"
                      "batch_map([3, 13], 'tests.handlers:mixed', retries=0)\n"
                      "print('not reached')\n")
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "not reached" not in done.stdout
    assert "RunFailed: success ratio 0.0000 is below min_success_ratio 1.0" in done.stderr


_fatal_once: list[int] = []


def fatal_once_at_13(x: int) -> int:
    from tasks.core.errors import FatalError

    _fatal_once.append(x)
    if x == 13 and _fatal_once.count(13) == 1:
        raise FatalError("the credentials expired")
    return x


def test_flow_retries_run_the_run_again_and_it_resumes(monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("BATCHFLOWS_FLOW_RETRY_DELAY_S", "0")
    _fatal_once.clear()
    s = batch_map(list(range(40)), fatal_once_at_13, chunk_size=10, max_concurrency=1, flow_retries=2)
    assert s.ok and s.succeeded == 40 and s.chunks_resumed == 1  # chunk 0 was done before the stop
    assert sorted(_fatal_once) == sorted([*range(40), 13])  # only the item that got the fatal answer ran twice
    retried = [r.getMessage() for r in caplog.records if "attempt 1 of 3 ended without finishing" in r.getMessage()]
    assert len(retried) == 1 and "the credentials expired" in retried[0] and "again in 0 s" in retried[0]
    _fatal_once.clear()
    with pytest.raises(RunFailed):  # without retries the same run ends Failed
        batch_map(list(range(40)), fatal_once_at_13, chunk_size=10, max_concurrency=1)


def test_flow_retries_do_not_run_a_missing_input_again_but_do_an_unreachable_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A missing source file or SQLite file is a mistake to fix (README: bad parameters are not retried); a
    database that does not answer may come back, so flow_retries runs that run again."""
    monkeypatch.setenv("BATCHFLOWS_FLOW_RETRY_DELAY_S", "30")
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(InputNotFound, match=re.escape(f"source file '{missing}' does not exist")):
        batch_map(str(missing), "tests.handlers:double", flow_retries=2)
    with pytest.raises(InputNotFound, match=r"source SQLite file .*gone\.db does not exist"):
        db_migrate(f"sqlite:///{tmp_path / 'gone.db'}", f"sqlite:///{tmp_path / 't.db'}", "orders", flow_retries=2)
    assert "ended without finishing" not in caplog.text  # neither waited 30 s for a retry
    monkeypatch.setenv("BATCHFLOWS_FLOW_RETRY_DELAY_S", "0")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connection refused
    with pytest.raises(SourceError, match="cannot connect to the source database") as unreachable:
        db_migrate(f"postgresql+psycopg://u@127.0.0.1:{port}/db", f"sqlite:///{tmp_path / 't.db'}", "orders",
                   flow_retries=1)
    assert not isinstance(unreachable.value, ConfigError)
    assert "db-migrate attempt 1 of 2 ended without finishing" in caplog.text


async def _agen(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


@pytest.mark.parametrize("kind", ["generator", "async generator", "iterator"])
def test_flow_retries_with_a_one_shot_source_is_refused_before_any_work(kind: str) -> None:
    """A retry would read what the first attempt left of a generator (and blame the source for changing)."""
    source = {"generator": lambda: (i for i in range(40)), "async generator": lambda: _agen(40),
              "iterator": lambda: iter(list(range(40)))}[kind]()
    _fatal_once.clear()
    with pytest.raises(ConfigError, match=r"flow_retries=1 cannot be used with a generator or iterator as 'source'"):
        batch_map(source, fatal_once_at_13, chunk_size=10, flow_retries=1)
    assert _fatal_once == []  # refused before any item ran
    with pytest.raises(ConfigError, match=r"as 'items'.* Pass a list, a file"):  # api_bulk's items: the same rule
        api_bulk((i for i in range(3)), base_url="http://127.0.0.1:9", flow_retries=2)


def test_flow_retries_with_a_function_returning_a_generator_resume_correctly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHFLOWS_FLOW_RETRY_DELAY_S", "0")
    _fatal_once.clear()
    s = batch_map(lambda: (i for i in range(40)), fatal_once_at_13, chunk_size=10, max_concurrency=1, flow_retries=1)
    assert s.ok and s.succeeded == 40 and s.chunks_resumed == 1
    assert sorted(_fatal_once) == sorted([*range(40), 13])  # every item once, the fatal one twice


def test_a_flow_loaded_from_its_file_pickles_under_its_package_name(tmp_path: Path) -> None:
    """A deployment loads 'flows/batch_map.py:batch_map_flow' as module 'batch_map'; Dask's scheduler and
    workers must still unpickle what the tasks carry (the flow, its parameter model) by an importable name."""
    dump = tmp_path / "flow.pickle"
    load = (
        "import cloudpickle, sys\n"
        "from prefect.flows import load_flow_from_entrypoint\n"
        "f = load_flow_from_entrypoint('flows/batch_map.py:batch_map_flow')\n"
        "assert f.fn.__module__ == 'flows.batch_map', f.fn.__module__\n"
        f"open({str(dump)!r}, 'wb').write(cloudpickle.dumps((f.fn, f.spec.model)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", load], cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)
    check = f"import pickle; fn, model = pickle.load(open({str(dump)!r}, 'rb')); print(model.__name__)"
    out = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "BatchMapParams", out.stderr[-2000:]


def _cancel_own_run_at_3(x: int) -> int:
    """Cancels the flow run it runs in through the API, as `prefect flow-run cancel <id>` does."""
    if x == 3:
        from prefect.client.orchestration import get_client
        from prefect.runtime import flow_run
        from prefect.states import Cancelling

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run.id, Cancelling(), force=True)
    return x


def test_a_direct_call_cancelled_through_prefect_says_so_and_its_rerun_resumes() -> None:
    """The run went on (Prefect cannot stop a run in the caller's process) and ended Cancelling: the caller got a
    bare UnfinishedRun traceback, the summary lost."""
    from flows.batch_map import batch_map
    from tasks.core.errors import BatchflowsError

    with pytest.raises(BatchflowsError, match=r"ended Cancelling: it was cancelled through Prefect .* Rerun with the "
                                              r"same run_key"):
        batch_map(list(range(8)), _cancel_own_run_at_3, chunk_size=2, max_concurrency=1, run_key="cancelled-direct")
    again = batch_map(list(range(8)), _cancel_own_run_at_3, chunk_size=2, max_concurrency=1, run_key="cancelled-direct")
    assert again.ok and again.succeeded == 8 and again.chunks_resumed == 4
