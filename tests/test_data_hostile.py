"""Hostile and broken inputs to fetch (issue 17.4 and 17.5): servers that drip, drop, lie in headers or loop, sources
that publish no checksum, and archives that are bombs, ambiguous, corrupt or truncated. Each ends in the project's
own one-line error, or in a reported skip where the rest of the source is still good."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from lic.data.download import DownloadError
from lic.data.fetch import fetch_source
from lic.errors import LicError
from lic.params import parse_params
from tests.data_support import Served, encode, http_server, http_source_params, photo

pytestmark = pytest.mark.integration
PNG = encode(photo("coffee.png").resize((300, 200)), "PNG")


def _members(dest: Path) -> list[str]:
    """Member names of every training shard of a fetched source, in shard order."""
    names = []
    for shard in sorted(dest.glob("train-*.tar")):
        with tarfile.open(shard) as tf:
            names += tf.getnames()
    return names


def _zip(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buffer.getvalue()


def _tar_gz(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _serve_one(name: str, body: bytes, **misbehaviour: dict) -> Served:
    return Served(files={f"/{name}": body}, **{key: {f"/{name}": value} for key, value in misbehaviour.items()})


# ---- downloads (17.4) ----


def test_a_slow_drip_is_dropped_by_the_minimum_speed(tmp_path: Path) -> None:
    body = os.urandom(2000)  # 50 bytes/s: every read returns long before the 2 s socket timeout
    with http_server(_serve_one("drip.png", body, drip_s=0.02)) as served:
        params = http_source_params(tmp_path, [{"url": served.url("/drip.png"), "size": len(body)}])
        params["data"]["download"].update(retries=1, timeout_s=2, min_speed_kib_s=1, speed_window_s=0.3)
        started = time.monotonic()
        with pytest.raises(DownloadError, match=r"slower than 1 KiB/s"):
            fetch_source(parse_params(params), "web")
    assert time.monotonic() - started < 10


def test_an_overall_deadline_bounds_every_attempt_together(tmp_path: Path) -> None:
    body = os.urandom(400)  # 100 bytes/s: above the minimum speed, so only the deadline stops it
    with http_server(_serve_one("slow.png", body, drip_s=0.01)) as served:
        params = http_source_params(tmp_path, [{"url": served.url("/slow.png"), "size": len(body)}])
        params["data"]["download"].update(retries=5, min_speed_kib_s=0.01, speed_window_s=0.3, deadline_s=1)
        started = time.monotonic()
        with pytest.raises(DownloadError, match=r"deadline of 1 s"):
            fetch_source(parse_params(params), "web")
    assert time.monotonic() - started < 10


def test_every_byte_received_is_kept_across_attempts(tmp_path: Path) -> None:
    body = os.urandom(50_000)  # every reply is cut after 12,000 bytes, less than one 64 KiB read
    with http_server(_serve_one("cut.png", body, drop_every=12_000)) as served:
        params = http_source_params(tmp_path, [{"url": served.url("/cut.png"), "size": len(body)}])
        params["data"]["download"]["retries"] = 5
        dest = fetch_source(parse_params(params), "web")
        ranges = [header for _, header in served.requests]
    assert ranges == [None, "bytes=12000-", "bytes=24000-", "bytes=36000-", "bytes=48000-"]
    with tarfile.open(dest / "train-00000.tar") as tf:
        assert tf.extractfile("cut.png").read() == body


@pytest.mark.parametrize(
    ("misbehaviour", "message"),
    [
        ({"headers": {"Content-Length": "abc"}}, r"Content-Length 'abc'"),
        ({"headers": {"Content-Length": "-5"}}, r"Content-Length '-5'"),
        ({"redirects": "/bad.png"}, r"redirect"),
    ],
    ids=["content-length-not-a-number", "content-length-negative", "redirect-loop"],
)
def test_transport_errors_are_one_download_error(tmp_path: Path, misbehaviour: dict, message: str) -> None:
    with http_server(_serve_one("bad.png", PNG, **misbehaviour)) as served:
        params = http_source_params(tmp_path, [{"url": served.url("/bad.png"), "size": len(PNG)}])
        with pytest.raises(DownloadError, match=message) as caught:
            fetch_source(parse_params(params), "web")
    assert "\n" not in str(caught.value)


def test_an_unsupported_url_is_a_download_error(tmp_path: Path) -> None:
    params = http_source_params(tmp_path, [{"url": "ftp://127.0.0.1/x.png", "size": 10}])
    with pytest.raises(DownloadError, match=r"ftp://127\.0\.0\.1/x\.png"):
        fetch_source(parse_params(params), "web")


def test_a_download_of_unknown_size_and_no_checksum_is_refused(tmp_path: Path) -> None:
    with http_server(_serve_one("open.png", PNG, headers={"Content-Length": None})) as served:
        params = http_source_params(tmp_path, [{"url": served.url("/open.png")}])
        with pytest.raises(LicError, match=r"size.*params\.yaml"):
            fetch_source(parse_params(params), "web")
        assert [path for path, _ in served.requests] == []  # refused before any body was asked for


def test_a_source_without_published_checksums_is_pinned_by_its_first_fetch(tmp_path: Path) -> None:
    other = bytearray(PNG)
    other[-100] ^= 0xFF  # same size, one byte different
    with http_server(Served(files={"/kodim01.png": PNG})) as served:
        url = served.url("/kodim01.png")
        params = http_source_params(tmp_path, [{"url": url}], split="eval")
        dest = fetch_source(parse_params(params), "web")
        pins_file = Path(params["data"]["paths"]["pins"])
        assert json.loads(pins_file.read_text()) == {url: {"sha256": hashlib.sha256(PNG).hexdigest(), "size": len(PNG)}}
        assert (dest / "eval" / "kodim01.png").read_bytes() == PNG

        served.files["/kodim01.png"] = bytes(other)  # the server now sends something else
        with pytest.raises(DownloadError, match=r"checksum mismatch.*pinned in .*pins") as caught:
            fetch_source(parse_params(params), "web")
    assert str(pins_file) in str(caught.value)
    assert (dest / "eval" / "kodim01.png").read_bytes() == PNG  # the pinned copy stays in place
    assert json.loads(pins_file.read_text())[url]["sha256"] == hashlib.sha256(PNG).hexdigest()


# ---- archives (17.5) ----


def _fetch_archive(tmp_path: Path, name: str, body: bytes, **limits: float) -> Path:
    with http_server(Served(files={f"/{name}": body})) as served:
        params = http_source_params(tmp_path, [{"url": served.url(f"/{name}"), "size": len(body)}])
        params["data"]["archive_limits"].update(limits)
        return fetch_source(parse_params(params), "web")


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_a_decompression_bomb_is_refused_before_it_is_written(tmp_path: Path, kind: str) -> None:
    members = [("set/a.png", PNG), ("set/bomb.png", bytes(30_000_000))]  # 30 MB of zeros: a ratio of ~1000
    body = _zip(members) if kind == "zip" else _tar_gz(members)
    with pytest.raises(LicError, match=r"expands \d+ times .*max_ratio"):
        _fetch_archive(tmp_path, f"bomb.{kind}", body)
    assert not (tmp_path / "data" / "raw" / "web").exists()


def test_the_total_bytes_of_an_archive_are_capped(tmp_path: Path) -> None:
    members = [(f"set/{i}.png", os.urandom(300_000)) for i in range(4)]
    with pytest.raises(LicError, match=r"max_total_gb"):
        _fetch_archive(tmp_path, "big.zip", _zip(members, zipfile.ZIP_STORED), max_total_gb=0.001)


def test_a_member_over_the_size_cap_is_a_reported_skip(tmp_path: Path) -> None:
    body = _zip([("set/small.png", PNG), ("set/huge.png", os.urandom(300_000))], zipfile.ZIP_STORED)
    dest = _fetch_archive(tmp_path, "set.zip", body, max_member_mb=0.2)
    assert _members(dest) == ["set/small.png"]
    skipped = json.loads((dest / "source.json").read_text())["skipped"]
    assert [(entry["member"], "max_member_mb" in entry["reason"]) for entry in skipped] == [("set/huge.png", True)]


def test_duplicate_member_names_are_refused(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        body = _zip([("set/a.png", PNG), ("set/a.png", encode(photo("chelsea.png"), "PNG"))])
    with pytest.raises(LicError, match=r"set/a.png.* twice"):
        _fetch_archive(tmp_path, "dup.zip", body)


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "garbage.tar.gz"])
def test_a_truncated_or_corrupt_archive_is_one_clear_error(tmp_path: Path, kind: str) -> None:
    members = [(f"set/{i}.png", os.urandom(100_000)) for i in range(3)]
    if kind == "garbage.tar.gz":
        body, name = os.urandom(5000), "set.tar.gz"
    else:
        whole = _zip(members) if kind == "zip" else _tar_gz(members)
        body, name = whole[: len(whole) // 2], f"set.{kind}"  # what a server publishes truncated
    with pytest.raises(LicError, match=r"corrupt or truncated") as caught:
        _fetch_archive(tmp_path, name, body)
    assert "\n" not in str(caught.value) and name in str(caught.value)


def test_a_corrupt_member_is_a_reported_skip_and_the_rest_is_kept(tmp_path: Path) -> None:
    good, bad = PNG, encode(photo("chelsea.png"), "PNG")
    body = bytearray(_zip([("set/good.png", good), ("set/bad.png", bad)], zipfile.ZIP_STORED))
    at = body.index(bad[1000:1016])
    body[at : at + 16] = bytes(16)  # the stored bytes no longer match the member's CRC-32
    dest = _fetch_archive(tmp_path, "set.zip", bytes(body))
    assert _members(dest) == ["set/good.png"]
    with tarfile.open(dest / "train-00000.tar") as tf:
        assert tf.extractfile("set/good.png").read() == good
    skipped = json.loads((dest / "source.json").read_text())["skipped"]
    assert [entry["member"] for entry in skipped] == ["set/bad.png"] and "CRC" in skipped[0]["reason"]


def test_a_truncated_last_member_of_a_tar_is_a_reported_skip(tmp_path: Path) -> None:
    whole = _tar_gz([("set/a.png", PNG), ("set/b.png", os.urandom(200_000))])
    raw = gzip.decompress(whole)
    cut = gzip.compress(raw[: 512 + len(PNG) + (-len(PNG)) % 512 + 512 + 50_000])  # ends inside b.png's data
    dest = _fetch_archive(tmp_path, "cut.tar.gz", cut)
    assert _members(dest) == ["set/a.png"]
    skipped = json.loads((dest / "source.json").read_text())["skipped"]
    assert [entry["member"] for entry in skipped] == ["set/b.png"]
