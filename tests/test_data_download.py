"""Download adapters against a real HTTP server on 127.0.0.1: resume, retries, parallel parts and files, checksums,
errors, the disk preflight, and placement into the raw layout (tar shards for training, loose files for eval)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from lic.data.archive import ArchiveError, Member
from lic.data.download import DownloadError, Remote, download
from lic.data.fetch import fetch_source
from lic.data.layout import SHARD_GLOB, Placement
from lic.errors import LicError
from lic.params import parse_params
from tests.data_support import (
    ROOT,
    Served,
    archive_limits,
    download_policy,
    encode,
    http_server,
    http_source_params,
    photo,
    project_params,
    tool_env,
)

pytestmark = pytest.mark.integration
FAST = download_policy(retries=3, backoff_s=0.01, timeout_s=10)


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
    assert resume == "bytes=1000000-"  # resumed exactly at the cut: every byte received was kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]


def test_resumes_a_part_left_by_an_earlier_run(tmp_path: Path) -> None:
    body = _blob(500_000)
    cut = 3 * 65536 + 123
    served = Served(files={"/f.bin": body}, drop_after={"/f.bin": cut})
    with http_server(served):
        remote = Remote(served.url("/f.bin"), size=len(body))
        with pytest.raises(DownloadError, match="gave up after 1 attempts"):
            download(remote, tmp_path, download_policy(retries=0, backoff_s=0, timeout_s=10))
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


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _shard_members(dest: Path) -> dict[str, bytes]:
    """Every member of every training shard of a fetched source, by name."""
    found = {}
    for shard in sorted(dest.glob(SHARD_GLOB)):
        with tarfile.open(shard) as tf:
            found.update({info.name: tf.extractfile(info).read() for info in tf})
    return found


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_checksum_mismatch_fails_and_leaves_nothing_in_place(tmp_path: Path) -> None:
    archive = _zip({"set/a.png": encode(photo("chelsea.png"), "PNG")})
    with http_server(Served(files={"/set.zip": archive})) as served:
        params = http_source_params(tmp_path, [{"url": served.url("/set.zip"), "checksum": "sha256:" + "0" * 64}])
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
        params = http_source_params(
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
        "train-00000.tar",
    ]
    assert _shard_members(dest) == {"DIV/0001.png": png, "kodim01.png": png}  # readme.txt is not an image
    info = json.loads((dest / "source.json").read_text())
    assert info["active"] and info["inputs"][1]["checksum"] == "sha256:" + hashlib.sha256(png).hexdigest()
    assert not (Path(params["data"]["paths"]["downloads"]) / "web").exists()  # keep_archives: false


def test_vimeo_keeps_evenly_spaced_frames_of_listed_clips(tmp_path: Path) -> None:
    frame = encode(photo("rocket.jpg").resize((64, 36)), "PNG")
    members = {"vimeo_septuplet/sep_trainlist.txt": b"00001/0001\n00002/0007\n"}
    for clip in ("00001/0001", "00002/0007", "00003/0001"):
        members.update({f"vimeo_septuplet/sequences/{clip}/im{n}.png": frame for n in range(1, 8)})
    with http_server(Served(files={"/vimeo_septuplet.zip": _zip(members)})) as served:
        params = http_source_params(tmp_path, [{"url": served.url("/vimeo_septuplet.zip")}])
        params["data"]["sources"]["web"].update(adapter="vimeo", frames_per_sequence=3, list="sep_trainlist.txt")
        dest = fetch_source(parse_params(params), "web")
    kept = sorted(_shard_members(dest))
    assert kept == [f"{clip}/im{n}.png" for clip in ("00001/0001", "00002/0007") for n in (1, 4, 7)]


def test_large_files_come_in_parallel_ranged_parts_that_resume_one_by_one(tmp_path: Path) -> None:
    mib = 2**20
    body = _blob(4 * mib)
    policy = download_policy(retries=0, backoff_s=0.01, timeout_s=10, connections=4, part_mb=1)
    served = Served(files={"/big.bin": body}, drop_after={"/big.bin": 300_000}, delay_s={"/big.bin": 0.2})
    with http_server(served):
        remote = Remote(served.url("/big.bin"), size=len(body), checksum="sha256:" + hashlib.sha256(body).hexdigest())
        with pytest.raises(DownloadError, match="gave up after 1 attempts"):
            download(remote, tmp_path, policy)  # the first reply (part 0) is cut; the other parts arrive
        first = sorted(header or "" for _, header in served.requests)
        assert first == ["", f"bytes={mib}-{2 * mib - 1}", f"bytes={2 * mib}-{3 * mib - 1}", f"bytes={3 * mib}-"]
        assert served.max_in_flight == 4  # all four parts at once
        path = download(remote, tmp_path, policy)
    assert path.read_bytes() == body
    assert served.requests[4:] == [("/big.bin", f"bytes=300000-{mib - 1}")]  # only what part 0 lacked
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]


def test_several_files_download_at_once(tmp_path: Path) -> None:
    images = {f"/kodim{i:02d}.png": encode(photo("coffee.png").resize((64 + i, 48)), "PNG") for i in range(6)}
    served = Served(files=images, delay_s=dict.fromkeys(images, 0.3))
    with http_server(served):
        params = http_source_params(tmp_path, [{"url": served.url(path)} for path in images], split="eval")
        params["data"]["download"]["files_at_once"] = 3
        dest = fetch_source(parse_params(params), "web")
    assert served.max_in_flight == 3
    assert {f"/{p.name}": p.read_bytes() for p in (dest / "eval").iterdir()} == images


def _can_mount_tmpfs() -> bool:
    probe = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", "mount -t tmpfs none /mnt"]
    return shutil.which("unshare") is not None and subprocess.run(probe, capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unprivileged user and mount namespaces (unshare)")
def test_the_disk_preflight_refuses_a_source_larger_than_the_free_space(tmp_path: Path) -> None:
    files = {"/small.png": _blob(150_000), "/large.png": _blob(3_000_000), "/a.png": _blob(300_000)}
    files["/b.png"] = _blob(300_000)
    pattern = _blob(10_000)  # 1.5 MB that gzip squeezes 100-fold (under max_ratio): more than the preflight expects
    files["/dense.tar.gz"] = _tar_gz({f"set/{i}.png": pattern * 10 for i in range(15)})
    served = Served(files=files)
    data = tmp_path / "data"
    data.mkdir()

    def fetch_in_tmpfs(*paths: str) -> subprocess.CompletedProcess:
        """Stage fetch@web (its entry point, as DVC runs it) with data/ on a 1 MiB tmpfs in its own mount namespace."""
        entries = [{"url": served.url(path), "size": len(files[path])} for path in paths]
        (tmp_path / "params.yaml").write_text(json.dumps(http_source_params(tmp_path, entries, split="eval")))
        script = f"mount -t tmpfs -o size=1m tmpfs {data} && exec {sys.executable} -m pipelines.fetch web"
        command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script]
        env = {**tool_env(), "PYTHONPATH": str(ROOT)}
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)

    with http_server(served):
        refused = fetch_in_tmpfs("/large.png")
        assert served.requests == []  # nothing was downloaded
        fits = fetch_in_tmpfs("/small.png")
        assert served.requests == [("/small.png", None)]
        # 2 x 300 kB of downloads + 600 kB of files do not fit at once; one download at a time does
        in_turn = fetch_in_tmpfs("/a.png", "/b.png")
        overflow = fetch_in_tmpfs("/dense.tar.gz")
    assert refused.returncode == 1, refused.stderr
    message = refused.stderr.strip()
    assert message.count("\n") == 0 and message.startswith("error: web: needs 5.7 MiB")
    assert "only 1.0 MiB is free" in message
    assert fits.returncode == 0, fits.stderr
    assert in_turn.returncode == 0, in_turn.stderr
    assert "one at a time" in in_turn.stderr
    assert served.requests[1:3] == [("/a.png", None), ("/b.png", None)]
    assert overflow.returncode == 1, overflow.stderr  # the disk filled while packing: one line, no traceback
    assert overflow.stderr.strip().splitlines()[-1].endswith("cannot write the raw data (No space left on device)")
    assert "Traceback" not in overflow.stderr


def test_the_sample_is_one_training_shard_and_loose_evaluation_files(tmp_path: Path) -> None:
    params = project_params()
    params["data"]["paths"] = {key: str(tmp_path / value) for key, value in params["data"]["paths"].items()}
    settings = params["data"]["sources"]["sample"]
    dest = fetch_source(parse_params(params), "sample")
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == sorted(
        ["source.json", "train-00000.tar"] + [f"eval/{entry}" for entry in settings["eval"]]
    )
    info = json.loads((dest / "source.json").read_text())
    (shard,) = info["shards"]
    assert shard["file"] == "train-00000.tar" and shard["bytes"] == (dest / "train-00000.tar").stat().st_size
    assert shard["sha256"] == hashlib.sha256((dest / "train-00000.tar").read_bytes()).hexdigest()
    members = _shard_members(dest)
    assert list(members) == settings["train"] == [m["name"] for m in shard["members"]]
    blob = (dest / "train-00000.tar").read_bytes()
    for entry in shard["members"]:  # the recorded offset and size locate each member's bytes in the shard
        assert blob[entry["offset"] : entry["offset"] + entry["size"]] == members[entry["name"]]
    assert info["licenses"]["train/skimage/brick.png"] == "CC0-1.0"
    assert info["licenses"]["eval/skimage/astronaut.png"] == "public-domain (NASA)"
    assert info["eval_files"] == 3 and info["skipped"] == []


def test_shards_roll_over_at_the_configured_size_and_are_reproducible(tmp_path: Path) -> None:
    folder = tmp_path / "team"
    images = {f"set{i % 2}/{i:02d}.png": _blob(60_000 + 1000 * i) for i in range(10)}
    for name, data in images.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    params = project_params()
    params["data"]["paths"] = {key: str(tmp_path / value) for key, value in params["data"]["paths"].items()}
    params["data"]["archive_shard_mb"] = 0.2
    params["data"]["sources"]["team"] = {"adapter": "local", "path": str(folder), "split": "train", "license": "x"}
    params["data"]["profiles"]["test"] = ["team"]
    params["profile"] = "test"
    dest = fetch_source(parse_params(params), "team")
    shards = json.loads((dest / "source.json").read_text())["shards"]
    assert len(shards) == 4 and all(shard["bytes"] <= 0.2 * 2**20 for shard in shards)
    assert _shard_members(dest) == dict(sorted(images.items()))  # each image once, in order
    again = fetch_source(parse_params(params), "team")
    assert json.loads((again / "source.json").read_text())["shards"] == shards  # same bytes, same hashes


def test_placement_never_follows_a_link_in_the_destination(tmp_path: Path) -> None:
    staging, outside = tmp_path / "staging", tmp_path / "outside"
    (staging / "eval").mkdir(parents=True)
    outside.mkdir()
    image = tmp_path / "a.png"
    image.write_bytes(b"png bytes")
    (staging / "eval" / "set").symlink_to(outside)  # a folder link planted where a member's folder goes
    (staging / "eval" / "b.png").symlink_to(outside / "b.png")  # and a dangling link where a file goes
    place = Placement(staging, 2**20, archive_limits())
    with pytest.raises(ArchiveError, match="'set' is a link"):
        place.add_file("eval", "set/a.png", image)
    with pytest.raises(ArchiveError, match="already exists"):
        place.add_file("eval", "b.png", image)
    assert list(outside.iterdir()) == []
    with pytest.raises(ArchiveError, match="outside the destination"):
        place.add_members("eval", [Member("../../escape.png", 3, lambda: io.BytesIO(b"png"))], str, "crafted.zip")


def test_downloads_of_one_source_must_not_share_a_file_name(tmp_path: Path) -> None:
    with http_server(Served(files={"/a/x.png": b"1", "/b/x.png": b"2"})) as served:
        params = http_source_params(tmp_path, [{"url": served.url(p), "size": 1} for p in ("/a/x.png", "/b/x.png")])
        with pytest.raises(LicError, match=r"share the file name 'x\.png'"):
            fetch_source(parse_params(params), "web")
        assert served.requests == []
