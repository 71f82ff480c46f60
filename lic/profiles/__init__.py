"""Profiles: what params.yaml holds besides the tables keyed by profile.

`profile` picks each profile's entry of the tables keyed by it (data.profiles, train.steps,
loader.crop_mix_from). The rate points cannot work that way: DVC's `foreach` reads one fixed key (`lambdas`) and
cannot pick a table by another parameter (no nested `${}`: treeverse/dvc#5167; `vars` are not interpolated), so a
profile also writes its rate points into `lambdas`. `lic profile NAME` does both, as a text edit of those two
entries, so params.yaml keeps its comments and layout (a YAML round trip reflows the whole file).
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

import yaml

from lic.errors import LicError
from lic.io.atomic import write_text

NAMES = ("sample", "full")
_PROFILE_LINE = re.compile(r"^profile: *\S+", re.M)
_LAMBDAS_BLOCK = re.compile(r"^lambdas:.*\n(?:(?:[ #].*)?\n)*?(?=\n|[^ #\n])", re.M)


def profile_values(name: str) -> dict:
    """The keys profile `name` sets: `profile` and `lambdas`."""
    if name not in NAMES:
        raise LicError(f"unknown profile {name!r}; use one of {', '.join(NAMES)}")
    return yaml.safe_load(files("lic.profiles").joinpath(f"{name}.yaml").read_text())


def apply_profile(name: str, params_path: Path) -> dict:
    """Set `profile` and `lambdas` of the params file to profile `name`'s; returns the new parameters."""
    values = profile_values(name)
    text = Path(params_path).read_text()
    if len(_PROFILE_LINE.findall(text)) != 1 or len(_LAMBDAS_BLOCK.findall(text)) != 1:
        raise LicError(f"{params_path}: expected one top-level `profile:` line and one `lambdas:` block")
    lambdas = yaml.safe_dump({"lambdas": values["lambdas"]}, sort_keys=False, default_flow_style=None, width=120)
    text = _PROFILE_LINE.sub(f"profile: {values['profile']}", text)
    text = _LAMBDAS_BLOCK.sub(lambda _: lambdas, text)
    params = yaml.safe_load(text)
    assert params["lambdas"] == values["lambdas"] and params["profile"] == name
    write_text(Path(params_path), text)
    return params
