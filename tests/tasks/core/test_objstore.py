"""The object storage state backend against a real S3-compatible server (moto on loopback)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tasks.core.errors import ConfigError
from tasks.core.objstore import ObjectStore, PreconditionFailed, cache_dir
from tasks.core.settings import EngineSettings
from tasks.core.state import RunDir
from tasks.core.watermarks import read_watermark, reset_watermarks, save_watermark
from tests.fixtures.s3 import CREDENTIALS, S3State, free_port, moto_server


def test_the_setting_takes_a_url_and_works_in_a_local_cache(s3_state: S3State) -> None:
    settings = EngineSettings()
    assert settings.state_url() == s3_state.url
    assert settings.resolved_state_dir() == s3_state.cache
    assert cache_dir(s3_state.url) != cache_dir(s3_state.url + "-other")  # the default cache is per URL


def test_objects_are_single_puts_listed_read_and_deleted(s3_state: S3State) -> None:
    store = ObjectStore.from_url(s3_state.url)
    store.check()
    big = b"x" * (12 * 1024 * 1024)  # above boto3's multipart threshold: still one PUT of finished bytes
    etag = store.put("runs/f/k/chunks/a", big)
    store.put("runs/f/k/plan.log", b"5\n5\n")
    assert s3_state.objects("state/runs/f/k/") == ["state/runs/f/k/chunks/a", "state/runs/f/k/plan.log"]
    assert store.list("runs/f/k") == {"chunks/a": etag, "plan.log": store.list("runs/f/k")["plan.log"]}
    obj = store.get("runs/f/k/chunks/a")
    assert obj is not None and obj.data == big and obj.etag == etag and "-" not in etag  # not a multipart ETag
    assert store.get("runs/f/k/missing") is None
    store.delete("runs/f/k/chunks/a")
    store.delete("runs/f/k/chunks/a")  # deleting what is gone is fine
    assert list(store.list("runs/f/k")) == ["plan.log"]


def test_a_reader_never_sees_a_half_written_object(s3_state: S3State) -> None:
    store = ObjectStore.from_url(s3_state.url)
    versions = [bytes([65 + i]) * (2 * 1024 * 1024) for i in range(4)]
    store.put("obj", versions[0])
    seen: set[bytes] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            obj = store.get("obj")
            assert obj is not None
            seen.add(obj.data[:1] + obj.data[-1:] + str(len(obj.data)).encode())

    reader = threading.Thread(target=read)
    reader.start()
    for _ in range(3):
        for version in versions:
            store.put("obj", version)
    stop.set()
    reader.join()
    whole = {v[:1] + v[-1:] + str(len(v)).encode() for v in versions}
    assert seen and seen <= whole  # every read is one whole version


def test_conditional_puts_are_honoured(s3_state: S3State) -> None:
    store = ObjectStore.from_url(s3_state.url)
    first = store.put("lease", b"1", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put("lease", b"2", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put("lease", b"3", if_match='"0123456789abcdef0123456789abcdef"')
    store.put("lease", b"4", if_match=first)
    obj = store.get("lease")
    assert obj is not None and obj.data == b"4"


def test_run_dir_pushes_finished_files_and_another_machine_pulls_them(s3_state: S3State, tmp_path: Path) -> None:
    store = ObjectStore.from_url(s3_state.url)
    here = RunDir.for_run("batch-map", "k1", tmp_path / "machine-a", store=store)
    here.chunks.mkdir()
    (here.chunks / "c0").write_bytes(b"record 0")
    here.push(here.chunks / "c0")
    here.plan.write_text("5\n")
    here.push(here.plan)
    here.write_checkpoint({"cursor": "abc"})  # pushed by itself
    (here.journal).mkdir()
    (here.journal / "c1.jsonl").write_text("bfj1 x\n")  # journals stay local
    assert s3_state.objects("state/runs/batch-map/k1/") == [
        "state/runs/batch-map/k1/checkpoint.json", "state/runs/batch-map/k1/chunks/c0",
        "state/runs/batch-map/k1/plan.log"]

    there = RunDir.for_run("batch-map", "k1", tmp_path / "machine-b", store=store)
    there.pull()
    assert (there.chunks / "c0").read_bytes() == b"record 0"
    assert there.read_checkpoint() == {"cursor": "abc"} and there.plan.read_text() == "5\n"
    assert not there.journal.exists()
    inode = (there.chunks / "c0").stat().st_ino
    there.pull()  # what this machine holds already (same MD5 as the ETag) is not downloaded again
    assert (there.chunks / "c0").stat().st_ino == inode

    here.discard(here.chunks / "c0")
    assert "state/runs/batch-map/k1/chunks/c0" not in s3_state.objects()


def test_pull_keeps_a_machine_that_cut_further_and_drops_one_that_diverged(s3_state: S3State, tmp_path: Path) -> None:
    store = ObjectStore.from_url(s3_state.url)
    a = RunDir.for_run("batch-map", "k2", tmp_path / "a", store=store)
    a.plan.write_text("5\n")
    a.push(a.plan)
    a.plan.write_text("5\n5\n")  # cut one more, its record written, then killed before pushing
    a.chunks.mkdir()
    (a.chunks / "c1").write_bytes(b"r1")
    (a.journal).mkdir()
    (a.journal / "c2.jsonl").write_text("bfj1 x\n")
    a.pull()  # the same machine again: its plan extends the stored one, so its work counts
    assert a.plan.read_text() == "5\n5\n" and (a.chunks / "c1").exists() and (a.journal / "c2.jsonl").exists()
    assert store.get("runs/batch-map/k2/chunks/c1") is not None
    assert store.get("runs/batch-map/k2/plan.log").data == b"5\n5\n"  # type: ignore[union-attr]

    b = RunDir.for_run("batch-map", "k2", tmp_path / "b", store=store)
    b.plan.write_text("7\n")  # another cut than what storage holds now
    b.chunks.mkdir()
    (b.chunks / "stale").write_bytes(b"old")
    b.pull()
    assert b.plan.read_text() == "5\n5\n" and not (b.chunks / "stale").exists() and (b.chunks / "c1").exists()


def test_watermarks_live_in_object_storage(s3_state: S3State, tmp_path: Path) -> None:
    save_watermark("api-extract", "s1", {"value": 3}, run_key="r")
    assert "state/watermarks/api-extract/s1.json" in s3_state.objects()
    (s3_state.cache / "watermarks" / "api-extract" / "s1.json").unlink()  # another machine: an empty cache
    assert read_watermark("api-extract", "s1")["value"] == 3  # type: ignore[index]
    assert reset_watermarks("api-extract") == [f"{s3_state.url}/watermarks/api-extract/s1.json"]
    assert read_watermark("api-extract", "s1") is None


# --------------------------------------------------------------------------- clear errors


def _config_error(monkeypatch: pytest.MonkeyPatch, **env: str | None) -> str:
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        EngineSettings().object_store()
    text = str(info.value)
    assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in text
    return text


def test_a_bad_url_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _config_error(monkeypatch, BATCHFLOWS_STATE_DIR="gs://bucket/prefix")
    assert "'gs://bucket/prefix'" in text and "s3://bucket/prefix" in text
    text = _config_error(monkeypatch, BATCHFLOWS_STATE_DIR="s3://user:hunter22@bucket/p")
    assert "hunter22" not in text and "never from the URL" in text


def test_a_missing_bucket_is_a_config_error(s3_state: S3State, monkeypatch: pytest.MonkeyPatch) -> None:
    text = _config_error(monkeypatch, BATCHFLOWS_STATE_DIR="s3://no-such-bucket-here/p")
    assert "'s3://no-such-bucket-here/p'" in text and "bucket 'no-such-bucket-here' does not exist" in text


def test_an_unreachable_endpoint_is_a_config_error(s3_state: S3State, monkeypatch: pytest.MonkeyPatch) -> None:
    text = _config_error(monkeypatch, AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")
    assert s3_state.url in text and "cannot be reached" in text and "AWS_ENDPOINT_URL" in text


def test_missing_credentials_are_a_config_error(s3_state: S3State, monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    text = _config_error(monkeypatch, AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None)
    assert s3_state.url in text and "no AWS credentials" in text and "AWS_ACCESS_KEY_ID" in text


def test_wrong_credentials_are_a_config_error_without_the_secret(s3_state: S3State,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with moto_server(INITIAL_NO_AUTH_ACTION_COUNT="0") as checking:  # a server that checks every signature
        text = _config_error(monkeypatch, AWS_ENDPOINT_URL=checking)
    assert s3_state.url in text and "access denied" in text and "AWS_SECRET_ACCESS_KEY" in text
