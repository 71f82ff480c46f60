"""ImageNet-1k (ILSVRC2012): licence-gated, so it comes from what the user provides, in this order:

1. `local` (default `datasets/imagenet`, versioned by datasets.dvc): the official `ILSVRC2012_img_<split>.tar`
   files (MD5-checked against the published sums; the train tar nests one tar per class) or an extracted tree
   `<split>/.../*.JPEG`;
2. a Hugging Face token in HF_TOKEN, for an account that accepted the terms of ILSVRC/imagenet-1k;
3. KAGGLE_USERNAME and KAGGLE_KEY, for an account that joined the ImageNet localisation competition.

With none of them the stage stops and says exactly that. Images become shard members `<imagenet split>/...`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from lic.data import archive
from lic.data.download import Remote
from lic.data.fetch import FetchContext, Plan
from lic.data.layout import Placement
from lic.data.names import image_member, is_image_name
from lic.errors import LicError
from lic.io import checksums

HF_TERMS = "https://huggingface.co/datasets/ILSVRC/imagenet-1k"
KAGGLE_TERMS = "https://www.kaggle.com/competitions/imagenet-object-localization-challenge"
KAGGLE_PREFIX = "ILSVRC/Data/CLS-LOC/"


def plan(settings: dict[str, Any], context: FetchContext) -> Plan:
    route = _route(settings, context)
    if route == "local":
        local = Path(settings.local)
        inputs = [_local_input(local, split) for split in settings.splits]
        files = [path for path in inputs if path.is_file()]
        files += [
            p for tree in inputs if tree.is_dir() for p in tree.rglob("*") if p.is_file() and is_image_name(p.name)
        ]
        return Plan(local_bytes=sum(path.stat().st_size for path in files))
    if route == "huggingface":
        hub, token = settings.huggingface, _token(context)
        remotes = [
            Remote(url=f"{hub.url}/{name}", headers={"Authorization": f"Bearer {token}"})
            for split in settings.splits
            for name in hub.files[split]
        ]
        return Plan(remotes=remotes, access_hint=f"Check the credentials and accept the terms at {HF_TERMS}.")
    auth = (context.env["KAGGLE_USERNAME"], context.env["KAGGLE_KEY"])
    remote = Remote.from_params(settings.kaggle)
    return Plan(
        remotes=[Remote(remote.url, remote.size, remote.checksum, remote.name, auth=auth)],
        access_hint=f"Check the credentials and accept the terms at {KAGGLE_TERMS}.",
    )


def fetch(
    settings: dict[str, Any], downloads: Iterable[tuple[Remote, Path]], place: Placement, context: FetchContext
) -> dict[str, Any]:
    split = settings.split
    route = _route(settings, context)
    if route == "local":
        local = Path(settings.local)
        return {"inputs": [_from_local(local, s, settings, place, context) for s in settings.splits], "via": "local"}
    if route == "huggingface":
        files = iter(downloads)
        for imagenet_split in settings.splits:
            for _ in settings.huggingface.files[imagenet_split]:
                _, path = next(files)
                place.add_archive(split, path, lambda name, s=imagenet_split: _basename_image(name, s))
        return {"via": "huggingface"}
    wanted = tuple(f"{KAGGLE_PREFIX}{s}/" for s in settings.splits)

    def select(name: str) -> str | None:
        if not name.startswith(wanted) or not is_image_name(name):
            return None
        return name[len(KAGGLE_PREFIX) :]

    for _, path in downloads:
        place.add_archive(split, path, select)
    return {"via": "kaggle"}


def missing_message(local: Path, splits: list[str]) -> str:
    tars = " and ".join(f"ILSVRC2012_img_{split}.tar" for split in splits)
    return (
        "ImageNet needs accepted terms of access and credentials, and none were found. Provide one of: "
        f"(1) the official {tars}, or an extracted tree {splits[0]}/<wnid>/*.JPEG, in {local}/ "
        "(data.sources.imagenet.local), then `dvc add datasets` to version it; "
        f"(2) HF_TOKEN set to a Hugging Face token of an account that accepted the terms at {HF_TERMS}; "
        f"(3) KAGGLE_USERNAME and KAGGLE_KEY of an account that joined {KAGGLE_TERMS}."
    )


def _route(settings: dict[str, Any], context: FetchContext) -> str:
    local = Path(settings.local)
    if any(_local_input(local, split).exists() for split in settings.splits):
        return "local"
    if _token(context):
        return "huggingface"
    if context.env.get("KAGGLE_USERNAME") and context.env.get("KAGGLE_KEY"):
        return "kaggle"
    raise LicError(missing_message(local, settings.splits))


def _token(context: FetchContext) -> str | None:
    return context.env.get("HF_TOKEN") or context.env.get("HUGGING_FACE_HUB_TOKEN")


def _local_input(local: Path, split: str) -> Path:
    """The official tar of a split when present, else its extracted tree."""
    tar = local / f"ILSVRC2012_img_{split}.tar"
    return tar if tar.is_file() else local / split


def _from_local(local: Path, split: str, settings: dict[str, Any], place: Placement, context: FetchContext) -> dict:
    source = _local_input(local, split)
    if source.is_file():
        expected = settings.checksums.get(source.name)
        if expected and not checksums.matches(source, expected):
            raise LicError(f"{source}: checksum differs from the published {expected}; the file is damaged")
        count = place.add_members(
            settings.split, _official_tar(source, context), lambda name: _prefixed(name, split), source.name
        )
        return {"path": source.as_posix(), "checksum": expected, "images": count}
    if source.is_dir():
        files = [p for p in sorted(source.rglob("*")) if p.is_file() and is_image_name(p.name)]
        for path in files:
            place.add_file(settings.split, f"{split}/{path.relative_to(source).as_posix()}", path)
        return {"path": source.as_posix(), "images": len(files)}
    raise LicError(f"{local}: has neither ILSVRC2012_img_{split}.tar nor {split}/ for the ImageNet split {split!r}")


def _official_tar(tar: Path, context: FetchContext) -> Iterator[archive.Member]:
    """Members of ILSVRC2012_img_<split>.tar; the train tar holds `<wnid>.tar` per class, named `<wnid>/<file>`."""
    for outer in archive.members(tar, context.limits):
        if not outer.name.endswith(".tar"):
            yield outer
            continue
        wnid = PurePosixPath(outer.name).stem
        for inner in archive.nested(outer, context.limits):
            yield archive.Member(f"{wnid}/{inner.name}", inner.size, inner.open)


def _prefixed(name: str, split: str) -> str | None:
    return f"{split}/{name}" if image_member(name) else None


def _basename_image(name: str, split: str) -> str | None:
    return f"{split}/{PurePosixPath(name).name}" if is_image_name(name) else None
