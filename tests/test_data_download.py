"""Download adapters against a real HTTP server on 127.0.0.1: resume, retries, checksums, errors, placement."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import pytest

from lic.data.download import DownloadError, Remote, RetryPolicy, download
from lic.data.fetch import fetch_source
from lic.errors import LicError
from lic.params import parse_params
from tests.data_support import Served, encode, http_server, photo, project_params

pytestmark = pytest.mark.integration
FAST = RetryPolicy(retries=3, backoff_s=0.01, timeout_s=10)


def _blob(size: int) -> bytes:
    return os.urandom(size)


def test_resumes_after_a_dropped_connection(tmp_path: Path) -> None:
    body = _blob(3_000_000)
    served = Served(files={"/big.bin": body}, drop_after={"/big.bin": 1_000_000})
    with http_server(served):
        remote = Remote(served.url("/big.bin"), size=len(body), checksum="sha256:" + hashlib.sha256(body).hexdigest())
        path = download(remote, tmp_path, FAST)
    assert path.read_bytes() == body
    (_, no_range), (_, resume) = served.requests
    assert no_range is None
    offset = int(resume.removeprefix("bytes=").removesuffix("-"))
    assert 900_000 <= offset <= 1_000_000  # resumed near the cut (bytes of one interrupted read are lost)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]


def test_resumes_a_part_left_by_an_earlier_run(tmp_path: Path) -> None:
    body = _blob(500_000)
    cut = 3 * 65536  # on a read boundary, so every byte sent is kept
    served = Served(files={"/f.bin": body}, drop_after={"/f.bin": cut})
    with http_server(served):
        remote = Remote(served.url("/f.bin"), size=len(body))
        with pytest.raises(DownloadError, match="gave up after 1 attempts"):
            download(remote, tmp_path, RetryPolicy(retries=0, backoff_s=0, timeout_s=10))
        assert (tmp_path / "f.bin.part").stat().st_size == cut
        assert not (tmp_path / "f.bin").exists()
        assert download(remote, tmp_path, FAST).read_bytes() == body
    assert served.requests[-1] == ("/f.bin", f"bytes={cut}-")


def test_a_404_names_the_url_and_what_to_check(tmp_path: Path) -> None:
    with http_server(Served()) as served, pytest.raises(DownloadError) as caught:
        download(Remote(served.url("/missing.zip")), tmp_path, FAST)
    message = str(caught.value)
    assert "404" in message and served.url("/missing.zip") in message and "params.yaml" in message
    assert caught.value.status == 404
    assert len(served.requests) == 1  # a 404 is not retried


def test_size_announced_by_the_server_must_match_params(tmp_path: Path) -> None:
    with http_server(Served(files={"/a.zip": b"x" * 100})) as served, pytest.raises(DownloadError, match="100 bytes"):
        download(Remote(served.url("/a.zip"), size=99), tmp_path, FAST)
    assert list(tmp_path.iterdir()) == []


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _http_source_params(tmp_path: Path, files: list[dict], split: str = "train") -> dict:
    params = project_params()
    data = params["data"]
    data["paths"] = {key: str(tmp_path / value) for key, value in data["paths"].items()}
    data["download"].update(retries=2, backoff_s=0.01, timeout_s=10)
    data["sources"]["web"] = {"adapter": "http", "split": split, "license": "test", "files": files}
    data["profiles"]["test"] = ["web"]
    params["profile"] = "test"
    return params


def test_checksum_mismatch_fails_and_leaves_nothing_in_place(tmp_path: Path) -> None:
    archive = _zip({"set/a.png": encode(photo("chelsea.png"), "PNG")})
    with http_server(Served(files={"/set.zip": archive})) as served:
        params = _http_source_params(tmp_path, [{"url": served.url("/set.zip"), "checksum": "sha256:" + "0" * 64}])
        with pytest.raises(LicError, match="checksum mismatch"):
            fetch_source(parse_params(params), "web")
    raw = Path(params["data"]["paths"]["raw"])
    assert not raw.exists() or list(raw.iterdir()) == []  # no source folder, no staging leftovers
    downloads = Path(params["data"]["paths"]["downloads"]) / "web"
    assert list(downloads.iterdir()) == []  # the bad file is gone, so nothing resumes from it


def test_http_source_extracts_archives_and_places_single_images(tmp_path: Path) -> None:
    png = encode(photo("coffee.png"), "PNG")
    archive = _zip({"DIV/0001.png": png, "DIV/readme.txt": b"not an image"})
    served = Served(files={"/DIV.zip": archive, "/kodim01.png": png}, drop_after={"/DIV.zip": 5000})
    with http_server(served):
        params = _http_source_params(
            tmp_path,
            [
                {
                    "url": served.url("/DIV.zip"),
                    "size": len(archive),
                    "checksum": "md5:" + hashlib.md5(archive).hexdigest(),
                },
                {"url": served.url("/kodim01.png")},
            ],
        )
        dest = fetch_source(parse_params(params), "web")
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "source.json",
        "train/DIV/0001.png",
        "train/kodim01.png",
    ]
    info = json.loads((dest / "source.json").read_text())
    assert info["active"] and info["inputs"][1]["checksum"] == "sha256:" + hashlib.sha256(png).hexdigest()
    assert not (Path(params["data"]["paths"]["downloads"]) / "web").exists()  # keep_archives: false


def test_vimeo_keeps_evenly_spaced_frames_of_listed_clips(tmp_path: Path) -> None:
    frame = encode(photo("rocket.jpg").resize((64, 36)), "PNG")
    members = {"vimeo_septuplet/sep_trainlist.txt": b"00001/0001\n00002/0007\n"}
    for clip in ("00001/0001", "00002/0007", "00003/0001"):
        members.update({f"vimeo_septuplet/sequences/{clip}/im{n}.png": frame for n in range(1, 8)})
    with http_server(Served(files={"/vimeo_septuplet.zip": _zip(members)})) as served:
        params = _http_source_params(tmp_path, [{"url": served.url("/vimeo_septuplet.zip")}])
        params["data"]["sources"]["web"].update(adapter="vimeo", frames_per_sequence=3, list="sep_trainlist.txt")
        dest = fetch_source(parse_params(params), "web")
    kept = sorted(p.relative_to(dest / "train").as_posix() for p in (dest / "train").rglob("*.png"))
    assert kept == [f"{clip}/im{n}.png" for clip in ("00001/0001", "00002/0007") for n in (1, 4, 7)]
