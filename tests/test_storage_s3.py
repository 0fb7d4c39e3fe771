"""Outputs on S3 go straight to their final key (``stacsr.plumbing.storage.s3_upload``), against the local moto
server: a multipart upload is invisible until completed, so no temporary key, no CopyObject; and whatever fails
mid-upload, nothing appears under the final key and no incomplete upload is left behind."""

from __future__ import annotations

import functools
import os

import pytest

from stacsr.plumbing import retry as R
from stacsr.plumbing import storage
from tests.fixtures.faults import FaultProxy
from tests.fixtures.s3 import ACCESS_KEY, SECRET_KEY

MIB = 1 << 20


@pytest.fixture()
def small_parts(monkeypatch):
    """5 MiB parts (S3's minimum), so that a 12 MiB file takes three; quick retries."""
    monkeypatch.setattr(storage, "PART_SIZE", 5 * MIB)
    monkeypatch.setattr(storage, "retry", functools.partial(R.retry, delay=0.01))


@pytest.fixture()
def env(s3, monkeypatch):  # noqa: F811
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    return s3


def keys(s3, bucket: str) -> list[str]:  # noqa: F811
    return sorted(o["Key"] for o in storage.s3_client().list_objects_v2(Bucket=bucket).get("Contents", []))


def pending(bucket: str) -> list[dict]:
    return storage.s3_client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def test_part_size_keeps_within_10000_parts():
    assert storage.part_size(0) == storage.part_size(10 << 30) == 64 * MIB
    assert storage.part_size(625 << 30) == 64 * MIB  # 10,000 × 64 MiB
    assert storage.part_size((625 << 30) + 1) == 65 * MIB
    biggest = storage.part_size(storage.MAX_OBJECT)
    assert -(-storage.MAX_OBJECT // biggest) <= storage.MAX_PARTS and biggest <= 5 << 30 and biggest % MIB == 0


def test_large_put_is_one_multipart_upload_to_the_final_key(env, small_parts, monkeypatch, tmp_path):
    bucket = env.bucket()
    payload = os.urandom(12 * MIB + 12345)
    (tmp_path / "b.tif").write_bytes(payload)
    seen: list[tuple[list[str], list[str]]] = []
    parts = storage._read_parts

    def watched(src, chunk):
        for data in parts(src, chunk):
            yield data
            seen.append((keys(env, bucket), [u["Key"] for u in pending(bucket)]))  # after each part was sent

    monkeypatch.setattr(storage, "_read_parts", watched)
    copies = []
    client = storage.s3_client()
    client.meta.events.register("before-call.s3.CopyObject", lambda **kw: copies.append(kw))
    assert storage.put(tmp_path / "b.tif", f"s3://{bucket}/out/b.tif") == f"s3://{bucket}/out/b.tif"

    assert seen == [([], ["out/b.tif"])] * 3  # three parts, nothing visible meanwhile, the upload at the final key
    assert keys(env, bucket) == ["out/b.tif"] and pending(bucket) == []  # no .tmp- key ever, nothing left over
    assert env.filesystem.open_input_stream(f"{bucket}/out/b.tif").read() == payload
    assert copies == []


def test_small_files_are_one_put(env, tmp_path):
    bucket = env.bucket()
    storage.write_text(f"s3://{bucket}/cat/item.json", '{"id": "x"}')
    (tmp_path / "s.bin").write_bytes(b"")
    storage.put(tmp_path / "s.bin", f"s3://{bucket}/cat/empty.bin")
    assert keys(env, bucket) == ["cat/empty.bin", "cat/item.json"] and pending(bucket) == []
    assert env.filesystem.open_input_stream(f"{bucket}/cat/item.json").read() == b'{"id": "x"}'
    assert storage.exists(f"s3://{bucket}/cat/item.json")


def test_a_source_that_fails_mid_upload_leaves_nothing(env, small_parts, monkeypatch, tmp_path):
    bucket = env.bucket()
    (tmp_path / "b.tif").write_bytes(os.urandom(12 * MIB))
    parts = storage._read_parts

    def failing(src, chunk):
        it = parts(src, chunk)
        yield next(it)
        raise OSError("disk read error (injected)")

    monkeypatch.setattr(storage, "_read_parts", failing)
    with pytest.raises(OSError, match="injected"):
        storage.put(tmp_path / "b.tif", f"s3://{bucket}/out/b.tif")
    assert keys(env, bucket) == [] and pending(bucket) == []


def test_an_interrupt_mid_upload_leaves_nothing(env, small_parts, monkeypatch, tmp_path):
    bucket = env.bucket()
    (tmp_path / "b.tif").write_bytes(os.urandom(12 * MIB))
    parts = storage._read_parts

    def interrupted(src, chunk):
        it = parts(src, chunk)
        yield next(it)
        yield next(it)
        raise KeyboardInterrupt

    monkeypatch.setattr(storage, "_read_parts", interrupted)
    with pytest.raises(KeyboardInterrupt):
        storage.put(tmp_path / "b.tif", f"s3://{bucket}/out/b.tif")
    assert keys(env, bucket) == [] and pending(bucket) == []


def test_a_part_the_server_keeps_refusing_is_retried_then_the_upload_aborted(env, small_parts, monkeypatch, tmp_path):
    bucket = env.bucket()
    (tmp_path / "b.tif").write_bytes(os.urandom(12 * MIB))
    with FaultProxy(env.url, rates={}, permanent=("partNumber=2",)) as faulty:
        monkeypatch.setenv("AWS_ENDPOINT_URL", faulty.url)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", faulty.url)
        with pytest.raises(storage.StoreError) as e:
            storage.put(tmp_path / "b.tif", f"s3://{bucket}/out/b.tif")
    message = str(e.value)
    assert "\n" not in message and f"upload of s3://{bucket}/out/b.tif (part 2) failed after 6 tries" in message
    assert faulty.stats["permanent"] == 6  # part 2, every try; then the abort got through
    assert ACCESS_KEY not in message and SECRET_KEY not in message
    monkeypatch.setenv("AWS_ENDPOINT_URL", env.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", env.url)
    assert keys(env, bucket) == [] and pending(bucket) == []


def test_a_server_gone_mid_upload_leaves_no_object(env, small_parts, monkeypatch, tmp_path, caplog):
    """The proxy stops after the first part: the other parts, and the abort, cannot reach S3. No object appears
    (the upload is never completed); its parts stay for the bucket's lifecycle rule, and a warning says so."""
    bucket = env.bucket()
    (tmp_path / "b.tif").write_bytes(os.urandom(12 * MIB))
    faulty = FaultProxy(env.url, rates={}).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", faulty.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", faulty.url)
    parts = storage._read_parts

    def then_stop(src, chunk):
        it = parts(src, chunk)
        yield next(it)
        faulty.stop()
        yield from it

    monkeypatch.setattr(storage, "_read_parts", then_stop)
    with pytest.raises(storage.StoreError, match=r"\(part 2\) failed after 6 tries"):
        storage.put(tmp_path / "b.tif", f"s3://{bucket}/out/b.tif")
    monkeypatch.setenv("AWS_ENDPOINT_URL", env.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", env.url)
    assert keys(env, bucket) == []
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "abort of the upload" in warning and "lifecycle rule" in warning
    (left,) = pending(bucket)  # unreachable store: the abort could not be sent either
    storage.s3_client().abort_multipart_upload(Bucket=bucket, Key=left["Key"], UploadId=left["UploadId"])


def test_refusals_are_one_line_and_not_retried(env, tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x")
    with pytest.raises(storage.StoreError) as e:
        storage.put(tmp_path / "a.bin", "s3://no-such-bucket-stacsr/a.bin")
    assert str(e.value) == (
        "upload of s3://no-such-bucket-stacsr/a.bin failed: An error occurred (NoSuchBucket) when calling the "
        "PutObject operation: The specified bucket does not exist"
    )
