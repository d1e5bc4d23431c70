"""Canonical hashes of items and chunks, and handler identities, stable across processes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import json
import subprocess
import sys
import threading
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from tasks.core.identity import (
    UnhashableItem,
    canonical,
    chunk_hash,
    handler_identity,
    legacy_chunk_hashes,
    value_hash,
)

ROOT = Path(__file__).resolve().parents[3]


class Color(enum.Enum):
    RED = 1


@dataclasses.dataclass
class Order:
    id: int
    amount: Decimal


class Point(NamedTuple):
    x: int
    y: int


class Model(BaseModel):
    id: int
    at: dt.datetime


class Opaque:
    pass


SAMPLES: list[Any] = [
    None, True, False, 0, 1, -1, 10**30, 1.0, -0.0, 0.1, float("inf"), "", "a", "1", "é", b"\x00\xff",
    [], [1, 2], (1, 2), {"a": 1, "b": [1, 2]}, {1: "a"}, {"1": "a"}, {1: "a", "b": 2}, {1, 2, 3}, frozenset({"x"}),
    dt.datetime(2024, 1, 2, 3, 4, 5, 6), dt.datetime(2024, 1, 2, tzinfo=dt.UTC), dt.date(2024, 1, 2), dt.time(3, 4),
    dt.timedelta(days=1, seconds=2), Decimal("1.10"), Decimal("1.1"), uuid.UUID(int=7), Path("a/b"), Color.RED,
    Order(1, Decimal("2.5")), Point(1, 2), Model(id=1, at=dt.datetime(2024, 1, 1, tzinfo=dt.UTC)),
]


def test_every_sample_has_its_own_encoding() -> None:
    encodings = [canonical(v) for v in SAMPLES]
    assert len(set(encodings)) == len(SAMPLES)  # 1 / 1.0 / True, tuple / list, {1:} / {"1":} all differ


def test_dict_order_and_set_order_do_not_matter() -> None:
    assert value_hash({"a": 1, "b": 2}) == value_hash({"b": 2, "a": 1})
    assert value_hash({1: "x", "k": 2}) == value_hash({"k": 2, 1: "x"})  # mixed key types: no TypeError
    assert value_hash({3, 1, 2}) == value_hash({2, 3, 1})


def test_hashes_are_the_same_in_another_process() -> None:
    """Sets and str hashing are randomized per process (PYTHONHASHSEED): the hash must not be."""
    code = ("import json, sys; from tests.tasks.core.test_identity import SAMPLES; from tasks.core.identity import value_hash, "
            "chunk_hash; print(json.dumps([value_hash(v) for v in SAMPLES] + [chunk_hash(SAMPLES), chunk_hash([1, 2]), "
            "chunk_hash(['a', 'b'])]))")
    runs = [json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                      check=True, env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}).stdout)
            for seed in ("1", "2")]
    here = [value_hash(v) for v in SAMPLES] + [chunk_hash(SAMPLES), chunk_hash([1, 2]), chunk_hash(["a", "b"])]
    assert runs[0] == runs[1] == here


def test_chunk_hash_is_ordered_and_position_free() -> None:
    assert chunk_hash([1, 2]) != chunk_hash([2, 1])
    assert chunk_hash([[1], 2]) != chunk_hash([1, [2]])
    assert chunk_hash([1, 2], index=0) == chunk_hash([1, 2], index=9)  # the position is the cache key's part


def test_packed_chunks_of_ints_and_strings_keep_every_distinction() -> None:
    """Chunks of plain ints or strings are hashed from packed values: still nothing two different chunks share."""
    chunks = [[1, 2], [1, 2, 0], [2, 1], [1, True], [True, True], [1, 1.0], ["1", "2"], ["12"], ["1", "2", ""],
              ["ab", "c"], ["a", "bc"], ["a\x00b"], ["a", "\x00b"], [2**63 - 1], [2**63], [-(2**63)], [0], [""],
              ["\ud800"], [(1, 2)], [[1, 2]]]
    hashes = [chunk_hash(c) for c in chunks]
    assert len(set(hashes)) == len(chunks)
    with legacy_chunk_hashes():
        legacy = [chunk_hash(c) for c in chunks]
    assert hashes[-2:] == legacy[-2:] and hashes[13] != legacy[13] and hashes[14] == legacy[14]  # 2**63: canonical
    assert chunk_hash(["k"]) == chunk_hash([Opaque()], item_key=lambda o: "k")  # keys packed like items


def test_objects_without_a_stable_encoding_are_refused_naming_the_item_and_the_way_out() -> None:
    with pytest.raises(UnhashableItem) as refused:
        chunk_hash([1, {"a": Opaque()}], index=3)
    text = str(refused.value)
    assert "item 1 of chunk 3" in text and "Opaque" in text and "item_key" in text
    assert chunk_hash([Opaque()], item_key=lambda o: "k") == chunk_hash(["x"], item_key=lambda o: "k")


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
                    max_leaves=20))
@settings(max_examples=200, deadline=None)
def test_equal_json_values_hash_equal_and_json_round_trips_keep_the_hash(value: Any) -> None:
    assert value_hash(value) == value_hash(json.loads(json.dumps(value)))


def scale(x: int, rate: int) -> int:
    return x * rate


class Priced:
    def __init__(self, rate: int) -> None:
        self.rate = rate

    def __call__(self, x: int) -> int:
        return x * self.rate

    def handle(self, x: int) -> int:
        return x * self.rate


def make(rate: int) -> Any:
    def handler(x: int) -> int:
        return x * rate
    return handler


def test_handler_identity_covers_bound_arguments() -> None:
    ids = {
        "partial 2": handler_identity(functools.partial(scale, rate=2)).text,
        "partial 3": handler_identity(functools.partial(scale, rate=3)).text,
        "closure 2": handler_identity(make(2)).text,
        "closure 3": handler_identity(make(3)).text,
        "method 2": handler_identity(Priced(2).handle).text,
        "method 3": handler_identity(Priced(3).handle).text,
        "object 2": handler_identity(Priced(2)).text,
        "object 3": handler_identity(Priced(3)).text,
        "plain": handler_identity(scale).text,
        "path": handler_identity("tests.tasks.core.test_identity:scale").text,
    }
    assert len(set(ids.values())) == len(ids)
    assert handler_identity(make(2)).text == handler_identity(make(2)).text  # same config, same identity
    assert handler_identity(Priced(2).handle).text == handler_identity(Priced(2).handle).text
    assert handler_identity(functools.partial(scale, rate=2)).name == "tests.tasks.core.test_identity:scale"


def test_unhashable_bound_state_is_named_once_with_cache_version_as_the_way_out() -> None:
    lock = threading.Lock()

    def handler(x: int) -> int:
        with lock:
            return x

    identity = handler_identity(handler)
    assert identity.unstable == ("closure cell 'lock' (_thread.lock)",)
    note = identity.note() or ""
    assert "closure cell 'lock'" in note and "cache_version" in note
    assert handler_identity(scale).note() is None


def test_chunks_of_32_bit_ints_hash_from_marshal_and_the_earlier_forms_stay_reproducible() -> None:
    """0.15 hashes a chunk of plain ints within 32 bits from its marshal bytes; what 0.12-0.14 ("packed") and 0.11
    ("canonical") recorded for the same chunk is reproduced inside legacy_chunk_hashes, so their runs resume."""
    chunks = [[1, 2], [2, 1], [1, 2, 0], [1, True], [True, 1], [0], [-1], [2**31 - 1], [2**31], [-(2**31)],
              [-(2**31) - 1], [1, 1.0], [1, "1"], [1, None], [1, [2]], [1, (2,)], [1, 2**70]]
    hashes = [chunk_hash(c) for c in chunks]
    assert len(set(hashes)) == len(chunks)
    ten = list(range(10))
    assert chunk_hash(ten) == "efd6b0f786914296799912bad8e5a028"
    with legacy_chunk_hashes("packed"):
        assert chunk_hash(ten) == "f4b061633587497db29e4815015430c5"  # batchflows 0.12-0.14, pinned
    with legacy_chunk_hashes("canonical"):
        assert chunk_hash(ten) == "7f8dd454382676ba0086bd6b594e342b"  # batchflows <= 0.11, pinned
    assert chunk_hash([2**40, -5]) == "a377927a1043104051397124c2ce8d18"  # beyond 32 bits: packed as before
    assert chunk_hash(["a", "b"]) == "9de6609bbf543c26bcdeaeca96683b5b"  # strings: as before


def test_an_int_enum_an_int_subclass_or_a_bool_never_passes_for_a_plain_int_in_marshal_bytes() -> None:
    class Code(enum.IntEnum):
        A = 1

    class MyInt(int):
        pass

    assert len({chunk_hash([1, 2]), chunk_hash([Code.A, 2]), chunk_hash([True, 2]), chunk_hash([MyInt(1), 2])}) == 4
