"""ImageNet: local official tars or tree, the token-authenticated download, and the message when neither exists."""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
from pathlib import Path

import pytest

from lic.data.fetch import fetch_source
from lic.errors import LicError
from lic.params import parse_params
from tests.data_support import Served, encode, http_server, photo, project_params, run, write_params

JPEG = encode(photo("rocket.jpg").resize((300, 200)), "JPEG")


def _tar(members: dict[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _imagenet_params(tmp_path: Path) -> dict:
    params = project_params()
    data = params["data"]
    data["paths"] = {key: str(tmp_path / value) for key, value in data["paths"].items()}
    data["download"].update(retries=1, backoff_s=0.01, timeout_s=10)
    data["sources"]["imagenet"]["local"] = str(tmp_path / "datasets" / "imagenet")
    params["profile"] = "full"
    return params


def _images(dest: Path) -> list[str]:
    """The JPEG members of the source's training shards."""
    names = []
    for shard in dest.glob("train-*.tar"):
        with tarfile.open(shard) as tf:
            names += [name for name in tf.getnames() if name.endswith(".JPEG")]
    return sorted(names)


def test_official_tars_are_checked_and_unpacked(tmp_path: Path) -> None:
    params = _imagenet_params(tmp_path)
    local = Path(params["data"]["sources"]["imagenet"]["local"])
    local.mkdir(parents=True)
    train = _tar({f"{wnid}.tar": _tar({f"{wnid}_1.JPEG": JPEG, f"{wnid}_2.JPEG": JPEG}) for wnid in ("n01", "n02")})
    (local / "ILSVRC2012_img_train.tar").write_bytes(train)
    settings = params["data"]["sources"]["imagenet"]
    settings["checksums"]["ILSVRC2012_img_train.tar"] = "md5:" + hashlib.md5(train).hexdigest()
    dest = fetch_source(parse_params(params), "imagenet", env={})
    assert _images(dest) == [f"train/{w}/{w}_{n}.JPEG" for w in ("n01", "n02") for n in (1, 2)]

    settings["checksums"]["ILSVRC2012_img_train.tar"] = "md5:" + "0" * 32
    with pytest.raises(LicError, match="checksum differs"):
        fetch_source(parse_params(params), "imagenet", env={})
    assert _images(dest) == [f"train/{w}/{w}_{n}.JPEG" for w in ("n01", "n02") for n in (1, 2)]  # untouched


def test_an_extracted_tree_is_used_as_it_is(tmp_path: Path) -> None:
    params = _imagenet_params(tmp_path)
    params["data"]["sources"]["imagenet"]["splits"] = ["train", "val"]
    local = Path(params["data"]["sources"]["imagenet"]["local"])
    for relative in ("train/n01/a.JPEG", "val/ILSVRC2012_val_00000001.JPEG"):
        (local / relative).parent.mkdir(parents=True, exist_ok=True)
        (local / relative).write_bytes(JPEG)
    dest = fetch_source(parse_params(params), "imagenet", env={})
    assert _images(dest) == ["train/n01/a.JPEG", "val/ILSVRC2012_val_00000001.JPEG"]


@pytest.mark.integration
def test_hugging_face_download_sends_the_token_and_explains_a_refusal(tmp_path: Path) -> None:
    params = _imagenet_params(tmp_path)
    shard = _tar({"n01_1_n01.JPEG": JPEG, "n02_7_n02.JPEG": JPEG}, mode="w:gz")
    served = Served(files={"/data/train_images_0.tar.gz": shard})
    served.authorization["/data/train_images_0.tar.gz"] = "Bearer hf_good"
    with http_server(served):
        hub = params["data"]["sources"]["imagenet"]["huggingface"]
        hub["url"] = served.url("/data")
        hub["files"]["train"] = ["train_images_0.tar.gz"]
        with pytest.raises(LicError, match=r"401.*huggingface.co/datasets/ILSVRC/imagenet-1k"):
            fetch_source(parse_params(params), "imagenet", env={"HF_TOKEN": "hf_wrong"})
        dest = fetch_source(parse_params(params), "imagenet", env={"HF_TOKEN": "hf_good"})
    assert _images(dest) == ["train/n01_1_n01.JPEG", "train/n02_7_n02.JPEG"]


def test_without_data_or_credentials_the_cli_says_exactly_what_to_provide(tmp_path: Path) -> None:
    params = _imagenet_params(tmp_path)
    path = write_params(tmp_path, params)
    proc = run(
        [sys.executable, "-m", "lic.cli", "data", "fetch", "imagenet", "--params", str(path)], tmp_path, check=False
    )
    assert proc.returncode == 1
    message = proc.stderr.strip()
    assert message.count("\n") == 0 and message.startswith("error: ImageNet needs accepted terms")
    for needed in ("ILSVRC2012_img_train.tar", "datasets/imagenet", "HF_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        assert needed in message
    assert not (tmp_path / "data" / "raw" / "imagenet").exists()
