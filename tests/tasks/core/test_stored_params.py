"""tasks/core/stored_params.py: a credential refused as a plain flow parameter is masked in what Prefect
stored for the run (parameters shown in the UI and by ``prefect flow-run inspect``), in every flow that
refuses one, against the session's real Prefect server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flows.api_bulk import api_bulk_flow
from flows.api_extract import api_extract_flow
from flows.batch_map import batch_map_flow
from tasks.core.stored_params import mask_url_password
from tests.tasks.db.test_dburl import stored_for_run


@pytest.mark.parametrize(("url", "masked"), [
    ("http://bob:Pw-1@h/x", "http://bob:***@h/x"),
    ("https://u:p%40s@h:8443/a?q=1", "https://u:***@h:8443/a?q=1"),  # as written, percent-encoded
    ("postgresql://u:s3cret@Pa55@127.0.0.1:5/db", "postgresql://u:***@127.0.0.1:5/db"),  # an '@' in it
    ("postgresql://u:a/b@h:5/db", "postgresql://u:***@h:5/db"),  # a '/' in it (the database URL grammar)
    ("https://h/x", "https://h/x"),
    ("http://u@h/x", "http://u@h/x"),
])
def test_mask_url_password_keeps_the_url_but_its_password(url: str, masked: str) -> None:
    assert mask_url_password(url) == masked


def _refused(flow: Any, secret: str, **params: Any) -> dict[str, Any]:
    state = flow(**params, return_state=True)
    assert state.is_failed() and "stored by Prefect" in (state.message or ""), state.message
    stored = stored_for_run(state.state_details.flow_run_id)
    assert secret not in json.dumps(stored), stored
    return stored["parameters"]


def test_api_bulk_base_url_and_header_credentials_are_masked_once_refused(tmp_path: Any) -> None:
    params = _refused(api_bulk_flow, "Base-pw-7Q", items=[1], base_url="http://amy:Base-pw-7Q@127.0.0.1:1/api",
                      path_template="/x/{item}", output=str(tmp_path / "o.jsonl"))
    assert params["base_url"] == "http://amy:***@127.0.0.1:1/api" and params["items"] == [1]
    params = _refused(api_bulk_flow, "Hdr-tok-8W", items=[1], base_url="http://127.0.0.1:1/api",
                      path_template="/x/{item}", headers={"Authorization": "Bearer Hdr-tok-8W", "Accept": "text/x"})
    assert params["headers"] == {"Authorization": "***", "Accept": "text/x"}


def test_api_extract_credential_query_parameters_are_masked_once_refused(tmp_path: Any) -> None:
    out = str(tmp_path / "out")
    params = _refused(api_extract_flow, "Qk-9Zx", url="http://127.0.0.1:1/items?api_key=Qk-9Zx&page_size=5", output=out)
    assert params["url"] == "http://127.0.0.1:1/items?api_key=***&page_size=5"
    params = _refused(api_extract_flow, "Qp-3Lm", url="http://127.0.0.1:1/items", params={"access_token": "Qp-3Lm"},
                      output=out)
    assert params["params"] == {"access_token": "***"}


def test_batch_map_query_source_password_is_masked_once_refused() -> None:
    params = _refused(batch_map_flow, "Db-pw-5Rt", source="postgresql://bob:Db-pw-5Rt@127.0.0.1:1/shop",
                      handler="tests.handlers:double", query="SELECT id FROM t", query_key="id")
    assert params["source"] == "postgresql://bob:***@127.0.0.1:1/shop"
