"""batch_map with output=<folder>: a result JSON cannot hold exactly fails its item (unwritable_output), never
written as a repr or a guessed decoding; an item's bytes are written exactly (tagged, base64) and read back."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

from flows.batch_map import batch_map
from tasks.core.outcomes import from_typed

FAST = {"retries": 0, "retry_backoff_s": 0.001}


class Thing:
    def __init__(self, x: int) -> None:
        self.x = x


@dataclasses.dataclass
class Payload:
    name: str
    blob: object


RESULTS = {
    "object": Thing(1),
    "bytes": bytes([1, 255]),
    "utf8 bytearray": bytearray(b"ab"),
    "field bytes": Payload("a", b"\x01"),
    "nested bytes": {"files": [b"ab"]},
    "dict": {"n": 1},
    "documented": {"d": Decimal("12.50"), "when": dt.date(2024, 1, 5), "p": Payload("a", [1])},
}


def _returns(name: str) -> object:
    return RESULTS[name]


def test_a_result_json_cannot_hold_exactly_fails_its_item(tmp_path: Path) -> None:
    out = tmp_path / "out"
    s = batch_map(list(RESULTS), _returns, chunk_size=3, output=out, raise_on_failure=False, **FAST)
    assert (s.succeeded, s.failed, s.total) == (2, 5, 7), s.render_text()
    dead = {d["item"]: d for d in s.dead_letters()}
    assert set(dead) == {"object", "bytes", "utf8 bytearray", "field bytes", "nested bytes"}
    assert {d["category"] for d in dead.values()} == {"unwritable_output"}
    assert "Thing object has no JSON form: return a dict" in dead["object"]["message"]
    assert "UnwritableValue: the result: a bytes value has no exact JSON form" in dead["bytes"]["message"] and "base64" in dead["bytes"]["message"]
    assert "a bytearray value has no exact JSON form" in dead["utf8 bytearray"]["message"]
    assert list(s.results()) == [{"item": "dict", "result": {"n": 1}},
                                 {"item": "documented", "result": {"d": "12.50", "when": "2024-01-05",
                                                                   "p": {"name": "a", "blob": [1]}}}]
    written = "".join(p.read_text() for p in sorted(out.glob("part-*.jsonl")))
    assert "0x" not in written and "\\u0001" not in written and "b'" not in written


def _length(item: dict) -> int:
    return len(item["raw"])


def test_an_items_bytes_are_written_exactly_and_read_back(tmp_path: Path) -> None:
    items = [{"raw": b"\xff\x00", "n": Decimal("1.50")}, {"raw": b"ab", "n": Decimal("2")}]
    s = batch_map(items, _length, output=tmp_path / "out", **FAST)
    assert (s.succeeded, s.failed) == (2, 0)
    rows = list(s.results())
    assert [r["item"] for r in rows] == [{"raw": {"$bytes": "/wA="}, "n": "1.50"},
                                         {"raw": {"$bytes": "YWI="}, "n": "2"}]  # one form, never a repr
    assert [from_typed(r["item_typed"]) for r in rows] == items and [r["result"] for r in rows] == [2, 2]
    assert json.loads((tmp_path / "out" / "part-000000.jsonl").read_text().splitlines()[0])["item_typed"] == {
        "raw": {"$bytes": "/wA="}, "n": {"$decimal": "1.50"}}
