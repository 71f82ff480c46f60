"""ImageNet-1k (ILSVRC2012): licence-gated, so it comes from what the user provides, in this order:

1. `local` (default `datasets/imagenet`, versioned by datasets.dvc): the official `ILSVRC2012_img_<split>.tar`
   files (MD5-checked against the published sums; the train tar nests one tar per class) or an extracted tree
   `<split>/.../*.JPEG`;
2. a Hugging Face token in HF_TOKEN, for an account that accepted the terms of ILSVRC/imagenet-1k;
3. KAGGLE_USERNAME and KAGGLE_KEY, for an account that joined the ImageNet localisation competition.

With none of them the stage stops and says exactly that. Images land in `<split>/<imagenet split>/...`.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from lic.data import archive
from lic.data.download import DownloadError, Remote, download, provenance
from lic.data.fetch import FetchContext, place
from lic.data.rgb import image_member, is_image_name
from lic.errors import LicError
from lic.io import checksums

HF_TERMS = "https://huggingface.co/datasets/ILSVRC/imagenet-1k"
KAGGLE_TERMS = "https://www.kaggle.com/competitions/imagenet-object-localization-challenge"
KAGGLE_PREFIX = "ILSVRC/Data/CLS-LOC/"


def fetch(settings: dict[str, Any], staging: Path, context: FetchContext) -> dict[str, Any]:
    local = Path(settings.local)
    out = staging / settings.split
    if _provided(local, settings.splits):
        return _from_local(local, settings, out)
    token = context.env.get("HF_TOKEN") or context.env.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        return _from_huggingface(settings, out, context, token)
    if context.env.get("KAGGLE_USERNAME") and context.env.get("KAGGLE_KEY"):
        return _from_kaggle(settings, out, context, (context.env["KAGGLE_USERNAME"], context.env["KAGGLE_KEY"]))
    raise LicError(missing_message(local, settings.splits))


def missing_message(local: Path, splits: list[str]) -> str:
    tars = " and ".join(f"ILSVRC2012_img_{split}.tar" for split in splits)
    return (
        "ImageNet needs accepted terms of access and credentials, and none were found. Provide one of: "
        f"(1) the official {tars}, or an extracted tree {splits[0]}/<wnid>/*.JPEG, in {local}/ "
        "(data.sources.imagenet.local), then `dvc add datasets` to version it; "
        f"(2) HF_TOKEN set to a Hugging Face token of an account that accepted the terms at {HF_TERMS}; "
        f"(3) KAGGLE_USERNAME and KAGGLE_KEY of an account that joined {KAGGLE_TERMS}."
    )


def _provided(local: Path, splits: list[str]) -> bool:
    return any((local / f"ILSVRC2012_img_{split}.tar").is_file() or (local / split).is_dir() for split in splits)


def _from_local(local: Path, settings: dict[str, Any], out: Path) -> dict[str, Any]:
    inputs = []
    for split in settings.splits:
        tar = local / f"ILSVRC2012_img_{split}.tar"
        tree = local / split
        if tar.is_file():
            expected = settings.checksums.get(tar.name)
            if expected and not checksums.matches(tar, expected):
                raise LicError(f"{tar}: checksum differs from the published {expected}; the file is damaged")
            count = archive.extract(_official_tar(tar), out / split, image_member)
            inputs.append({"path": tar.as_posix(), "checksum": expected, "images": count})
        elif tree.is_dir():
            files = [p for p in sorted(tree.rglob("*")) if p.is_file() and is_image_name(p.name)]
            for path in files:
                place(path, out / split / path.relative_to(tree))
            inputs.append({"path": tree.as_posix(), "images": len(files)})
        else:
            raise LicError(f"{local}: has neither {tar.name} nor {split}/ for the ImageNet split {split!r}")
    return {"inputs": inputs, "via": "local"}


def _official_tar(tar: Path) -> Iterator[archive.Member]:
    """Members of ILSVRC2012_img_<split>.tar; the train tar holds `<wnid>.tar` per class, named `<wnid>/<file>`."""
    with tarfile.open(tar, mode="r|") as outer:
        for name, open_member in archive.tar_members(outer):
            if not name.endswith(".tar"):
                yield name, open_member
                continue
            wnid = PurePosixPath(name).stem
            with open_member() as inner_file, tarfile.open(fileobj=inner_file, mode="r|") as inner:
                for inner_name, open_inner in archive.tar_members(inner):
                    yield f"{wnid}/{inner_name}", open_inner


def _from_huggingface(settings: dict[str, Any], out: Path, context: FetchContext, token: str) -> dict[str, Any]:
    hub = settings.huggingface
    inputs = []
    for split in settings.splits:
        for name in hub.files[split]:
            remote = Remote(url=f"{hub.url}/{name}")
            path = _authorised(remote, context, {"Authorization": f"Bearer {token}"}, None, HF_TERMS)
            inputs.append(provenance(remote, path))
            archive.extract(archive.members(path), out / split, _basename_image)
    return {"inputs": inputs, "via": "huggingface"}


def _from_kaggle(settings: dict[str, Any], out: Path, context: FetchContext, auth: tuple[str, str]) -> dict[str, Any]:
    remote = Remote.from_params(settings.kaggle)
    path = _authorised(remote, context, {}, auth, KAGGLE_TERMS)
    wanted = tuple(f"{KAGGLE_PREFIX}{split}/" for split in settings.splits)

    def select(name: str) -> str | None:
        if not name.startswith(wanted) or not is_image_name(name):
            return None
        return name[len(KAGGLE_PREFIX) :]

    archive.extract(archive.members(path), out, select)
    return {"inputs": [provenance(remote, path)], "via": "kaggle"}


def _basename_image(name: str) -> str | None:
    return PurePosixPath(name).name if is_image_name(name) else None


def _authorised(
    remote: Remote, context: FetchContext, headers: Mapping[str, str], auth: tuple[str, str] | None, terms: str
) -> Path:
    try:
        return download(remote, context.downloads, context.policy, headers=headers, auth=auth)
    except DownloadError as err:
        if err.status in (401, 403):
            raise LicError(f"{err} Check the credentials and accept the terms at {terms}.") from None
        raise
