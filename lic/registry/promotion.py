"""The promotion gate: `champion` moves to a candidate only if the candidate is not worse on the same images.

Two versions of one registered model are trained for the same rate point (the same lambda and distortion), but
they never land on exactly the same bpp, so "better" needs a rule that compares points at different rates. The
rule is the objective both were trained to minimise, evaluated on real bitstreams:

    J = bpp + lambda * 255^2 * 10^(-PSNR / 10)      (metric mse: the MSE on [0, 1] implied by the mean PSNR)
    J = bpp + lambda * (1 - MS-SSIM)                (metric ms-ssim)

with the means over the evaluation images of each dataset. A candidate is promoted when its J is at most the
champion's times (1 + tolerance) on every dataset both were evaluated on, and only if those evaluations saw the
same images (equal pixel fingerprints); otherwise it is refused. At a fixed lambda, lower J means more quality
per bit along the slope lambda: a candidate that spends more bits must buy at least lambda's worth of quality.
The decision and its numbers are recorded on the candidate (tags `promotion`, `promotion_reason`, description).
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from lic.registry.tracking import is_not_found

CHAMPION, CANDIDATE = "champion", "candidate"
EVAL_SET_TAG = "eval_set."  # + dataset: fingerprint of the images the version was evaluated on


@dataclass(frozen=True)
class Scores:
    """What the gate needs of a version, read back from its tags."""

    version: str
    lmbda: float
    metric: str
    eval_sets: dict[str, str]
    means: dict[str, dict[str, float]]  # dataset -> bpp, psnr, ms_ssim

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
    if champion is None:
        return Decision(True, "first version evaluated for this rate point: no champion to compare with")
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
    return Decision(True, f"not worse than the champion: {detail}")


def champion_of(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as err:
        if is_not_found(err):
            return None
        raise


def promote(client: MlflowClient, name: str, version: str, tolerance: float = 0.0) -> Decision:
    """Gate `version` against the current champion; move `champion` if it passes; record the decision."""
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
    client.update_model_version(name, version, description=f"{verdict}: {decision.reason}")
    return decision
