"""The promotion gate: `champion` moves to a candidate only if it beats a classical codec and is not worse than the
champion, both on the same images.

First, the quality floor (params: registry.quality_floor, JPEG by default): a learned codec that is worse than
JPEG is not worth pulling, however it compares with earlier versions of itself. A version is one rate point, so
there is no curve of its own to take a BD-rate of; the single-point form of "BD-rate below 0" is used instead: per
dataset, the candidate's mean quality (PSNR for mse models, MS-SSIM in dB, -10 log10(1 - MS-SSIM), for ms-ssim
models) must be above the anchor's at the same bpp, interpolated on the anchor's curve (its Pareto frontier,
linearly in log bpp) measured by the anchors stage on the same images. Below the anchor's lowest rate the
candidate passes only with at least the quality of that lowest point (it then dominates it); beyond the anchor's
highest rate it cannot be shown better and does not pass. The verdict is recorded on the version (tags `floor`:
passed, failed or off; `floor_reason`).

Then the champion. Two versions of one registered model are trained for the same rate point (the same lambda and
distortion), but they never land on exactly the same bpp, so "better" needs a rule that compares points at
different rates. The rule is the objective both were trained to minimise, evaluated on real bitstreams:

    J = bpp + lambda * 255^2 * 10^(-PSNR / 10)      (metric mse: the MSE on [0, 1] implied by the mean PSNR)
    J = bpp + lambda * (1 - MS-SSIM)                (metric ms-ssim)

with the means over the evaluation images of each dataset. A candidate is promoted when its J is at most the
champion's times (1 + tolerance) on every dataset both were evaluated on, and only if those evaluations saw the
same images (equal pixel fingerprints); otherwise it is refused. At a fixed lambda, lower J means more quality
per bit along the slope lambda: a candidate that spends more bits must buy at least lambda's worth of quality.
A candidate that passed the floor replaces a champion that never did (one promoted before the floor existed).
The decision and its numbers are recorded on the candidate (tags `promotion`, `promotion_reason`, description).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from lic.eval.bd import frontier, quality_values
from lic.eval.measure import curve_points
from lic.registry.tracking import is_not_found

CHAMPION, CANDIDATE = "champion", "candidate"
FLOOR_TAG, FLOOR_PASSED, FLOOR_FAILED, FLOOR_OFF = "floor", "passed", "failed", "off"
EVAL_SET_TAG = "eval_set."  # + dataset: fingerprint of the images the version was evaluated on


@dataclass(frozen=True)
class Scores:
    """What the gate needs of a version, read back from its tags."""

    version: str
    lmbda: float
    metric: str
    eval_sets: dict[str, str]
    means: dict[str, dict[str, float]]  # dataset -> bpp, psnr, ms_ssim
    floor: str  # the quality floor's verdict: passed, failed or off
    floor_reason: str

    @classmethod
    def of(cls, version: ModelVersion) -> Scores:
        tags = version.tags
        datasets = {key.removeprefix(EVAL_SET_TAG) for key in tags if key.startswith(EVAL_SET_TAG)}
        return cls(
            version=str(version.version),
            lmbda=float(tags["lmbda"]),
            metric=tags["metric"],
            eval_sets={dataset: tags[EVAL_SET_TAG + dataset] for dataset in datasets},
            means={d: {m: float(tags[f"{d}_{m}"]) for m in ("bpp", "psnr", "ms_ssim")} for d in datasets},
            floor=tags.get(FLOOR_TAG, FLOOR_OFF),  # versions from before the floor existed: never checked
            floor_reason=tags.get(FLOOR_TAG + "_reason", ""),
        )

    def cost(self, dataset: str) -> float:
        means = self.means[dataset]
        if self.metric == "ms-ssim":
            return means["bpp"] + self.lmbda * (1 - means["ms_ssim"])
        return means["bpp"] + self.lmbda * 255**2 * 10 ** (-means["psnr"] / 10)


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str


def decide(candidate: Scores, champion: Scores | None, tolerance: float = 0.0) -> Decision:
    """Apply the rule in this module's docstring."""
    if candidate.floor == FLOOR_FAILED:
        return Decision(False, candidate.floor_reason)
    if champion is None:
        return Decision(
            True, _with_floor("first version evaluated for this rate point: no champion to compare with", candidate)
        )
    if candidate.floor == FLOOR_PASSED and champion.floor != FLOOR_PASSED:
        return Decision(True, _with_floor(f"champion v{champion.version} never passed the quality floor", candidate))
    if (candidate.lmbda, candidate.metric) != (champion.lmbda, champion.metric):
        return Decision(
            False,
            f"champion v{champion.version} is another rate point ({champion.metric}, "
            f"lambda {champion.lmbda:g}); J is only comparable at one lambda",
        )
    shared = sorted(d for d in candidate.eval_sets if champion.eval_sets.get(d) == candidate.eval_sets[d])
    if not shared:
        return Decision(
            False,
            f"no dataset evaluated on the same images as champion v{champion.version}: "
            "re-evaluate both on one evaluation set",
        )
    verdicts = []
    worse = []
    for dataset in shared:
        mine, theirs = candidate.cost(dataset), champion.cost(dataset)
        verdicts.append(f"{dataset}: J {mine:.5f} vs {theirs:.5f}")
        if mine > theirs * (1 + tolerance):
            worse.append(dataset)
    detail = f"{'; '.join(verdicts)} (champion v{champion.version}, {candidate.metric}, lambda {candidate.lmbda:g})"
    if worse:
        return Decision(False, f"worse than the champion on {', '.join(worse)}: {detail}")
    return Decision(True, _with_floor(f"not worse than the champion: {detail}", candidate))


def recheck_floor(client: MlflowClient, name: str, version: str, floor: Decision) -> Decision | None:
    """Apply the floor to a version registered before it existed (or while it was off): record the verdict, and
    take `champion` from the version if it fails, so no store keeps advertising a codec worse than the anchor.
    Returns the decision when the alias moved, else None."""
    client.set_model_version_tag(name, version, FLOOR_TAG, FLOOR_PASSED if floor.promoted else FLOOR_FAILED)
    client.set_model_version_tag(name, version, FLOOR_TAG + "_reason", floor.reason)
    current = champion_of(client, name)
    if floor.promoted or current is None or str(current.version) != str(version):
        return None
    client.delete_registered_model_alias(name, CHAMPION)
    decision = Decision(False, f"no longer champion: {floor.reason}")
    client.set_model_version_tag(name, version, "promotion", "refused")
    client.set_model_version_tag(name, version, "promotion_reason", decision.reason)
    return decision


def _with_floor(reason: str, candidate: Scores) -> str:
    return f"{reason}; {candidate.floor_reason}" if candidate.floor == FLOOR_PASSED else reason


def champion_of(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as err:
        if is_not_found(err):
            return None
        raise


def promote(client: MlflowClient, name: str, version: str, tolerance: float = 0.0, card: str = "") -> Decision:
    """Gate `version` against the current champion; move `champion` if it passes; record the decision (and the
    version's model card `card`) on the version."""
    current = champion_of(client, name)
    if current is not None and str(current.version) == str(version):
        return Decision(True, f"v{version} is already the champion")
    candidate = Scores.of(client.get_model_version(name, version))
    decision = decide(candidate, None if current is None else Scores.of(current), tolerance)
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "promotion", "accepted" if decision.promoted else "refused")
    client.set_model_version_tag(name, version, "promotion_reason", decision.reason)
    verdict = "Promoted to champion" if decision.promoted else "Not promoted"
    description = f"{verdict}: {decision.reason}" + (f"\n\n{card}" if card else "")
    client.update_model_version(name, version, description=description)
    return decision


@dataclass(frozen=True)
class QualityFloor:
    """The classical codec a candidate must beat (by name), and its measurements on the evaluation images: the
    anchors stage's per-image table, or None when it was not found at `source`."""

    codec: str
    source: Path
    table: pd.DataFrame | None

    @classmethod
    def measured(cls, codec: str, table: Path | str) -> QualityFloor:
        table = Path(table)
        return cls(codec, table, pd.read_csv(table) if table.is_file() else None)

    def check(self, candidate: pd.DataFrame, metric: str) -> Decision:
        """Whether the candidate's per-image table (an evaluation's images.csv) beats the anchor on every dataset."""
        if self.table is None:
            missing = f"{self.source} not found (run the anchors stage: `dvc repro anchors`)"
            return Decision(False, f"no {self.codec} measurement to compare with: {missing}")
        anchor = self.table[self.table["codec"] == self.codec]
        quality = "ms_ssim" if metric == "ms-ssim" else "psnr"
        verdicts, failed = [], []
        for dataset, rows in candidate.groupby("dataset", sort=True):
            measured = anchor[anchor["dataset"] == dataset]
            if set(measured["image"]) != set(rows["image"]) or measured.empty:
                verdict, passed = f"{dataset}: {self.codec} was not measured on the same images", False
            else:
                verdict, passed = _against_curve(dataset, curve_points(rows).iloc[0], measured, quality, self.codec)
            verdicts.append(verdict)
            if not passed:
                failed.append(dataset)
        detail = "; ".join(verdicts)
        if failed:
            return Decision(False, f"not better than {self.codec} on {', '.join(failed)}: {detail}")
        return Decision(True, f"better than {self.codec}: {detail}")


def _against_curve(
    dataset: str, point: pd.Series, anchor_rows: pd.DataFrame, quality: str, codec: str
) -> tuple[str, bool]:
    """(the verdict in words, passed) of one mean point against the anchor's frontier on one dataset."""
    curve = frontier(curve_points(anchor_rows), quality)
    rates, levels = np.log10(curve["bpp"].to_numpy(float)), quality_values(curve, quality)
    bpp = float(point["bpp"])
    level = float(quality_values(point.to_frame().T, quality)[0])
    unit = "dB PSNR" if quality == "psnr" else "dB MS-SSIM"
    mine = f"{dataset}: {level:.2f} {unit} at {bpp:.4f} bpp"
    if np.log10(bpp) > rates[-1]:
        highest = f"{levels[-1]:.2f} dB at {curve['bpp'].iloc[-1]:.4f} bpp"
        if level <= levels[-1]:
            return f"{mine}, more bits than {codec}'s highest rate, whose {highest} it does not reach", False
        return f"{mine}, beyond {codec}'s measured rates (highest: {highest}): not shown better", False
    if np.log10(bpp) < rates[0]:
        passed = level >= levels[0]
        outcome = "matches or beats" if passed else "does not reach"
        lowest = f"{levels[0]:.2f} dB at {curve['bpp'].iloc[0]:.4f} bpp"
        return f"{mine}, below {codec}'s lowest rate, whose {lowest} it {outcome}", passed
    reference = float(np.interp(np.log10(bpp), rates, levels))
    return f"{mine} vs {codec} {reference:.2f} dB at that rate", level > reference
