"""Official LoC-LIC and MLIC++ (2024) checkpoints mapped onto our models, tensor by tensor.

The official networks are ours module for module (docs/model.md, "Official weights"); only names differ, plus
one layout: the official LocalContext splits q/k/v into heads with the head index varying fastest, ours into
contiguous blocks, so the rows of its qkv projection are permuted. The rules below are those of the reference
fact sheet (§4); every tensor of the file must be claimed by one of them, every tensor of our model must be
filled, and shapes must agree, or nothing is written.

An official file is `torch.save` of {epoch, state_dict, loss, optimizer, aux_optimizer, lr_scheduler}; only
`state_dict` is read. It loads with `weights_only=True` (tensors, numbers and the optimisers' plain dicts), so no
extra type is allow-listed and nothing in the file can run code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from lic.errors import LicError
from lic.models.zoo import build

SOURCES = {"loclic-official": "loclic", "mlicpp-official": "mlicpp"}  # --from value -> our architecture
DATA_PARALLEL_PREFIX = "module."  # nn.DataParallel / DistributedDataParallel runs save their keys under it
# The coder's tables: their sizes depend on the weights and the scale table, so they are rebuilt, never loaded.
CODER_BUFFERS = tuple(
    f"{module}.{name}"
    for module, names in (
        ("entropy_bottleneck", ("_quantized_cdf", "_offset", "_cdf_length")),
        ("gaussian_conditional", ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")),
    )
    for name in names
)
# Present only in the 2023 MLIC++ weights (LatentResidualPredictionOld: a fourth conv; SynthesisTransformOld:
# a 320->192 first block with a skip).
OLD_MLICPP_KEYS = re.compile(r"^lrp_(anchor|nonanchor)\.\d+\.lrp_transform\.6\.|^g_s\.synthesis_transform\.0\.skip\.")
QKV_KEY = re.compile(r"^local_context\.\d+\.qkv\.(weight|bias)$")
SHOWN = 8  # keys listed per kind of problem in an error message

_LOCAL_CONTEXT_NAMES = {
    "norm1": "norm",
    "qkv_proj": "qkv",
    "norm2": "mlp.0",
    "mlp.fc1": "mlp.1",
    "mlp.fc2": "mlp.3",
    "fusion": "fusion",
    "proj": "proj",
}
_PROJECTION_NAMES = {"queries": "query", "keys": "key", "values": "value"}
_BOTTLENECK_NAMES = {"matrix": "matrices", "bias": "biases", "factor": "factors"}  # CompressAI <= 1.2.6 names
DROP = object()  # a rule's answer for an official tensor with no counterpart (recomputed by our model)


def _shifted(match: re.Match, template: str) -> str:
    """Official per-slice lists of the contexts start at slice 1 (index 0 is None); ours start at 0."""
    return template.format(int(match["i"]) - 1, match["rest"])


def _local_context(match: re.Match) -> str | object | None:
    rest = match["rest"]
    if rest == "relative_position_index":
        return DROP
    if rest == "relative_position_table":
        return f"local_context.{match['i']}.position_bias"
    name, _, tensor = rest.rpartition(".")
    if name not in _LOCAL_CONTEXT_NAMES:
        return None
    return f"local_context.{match['i']}.{_LOCAL_CONTEXT_NAMES[name]}.{tensor}"


def _global_context(match: re.Match) -> str:
    head, _, rest = match["rest"].partition(".")
    return f"global_{match['kind']}_context.{int(match['i']) - 1}.{_PROJECTION_NAMES.get(head, head)}.{rest}"


# (pattern on the official key, our key: a template on the named groups, or a function of the match)
RULES: list[tuple[re.Pattern, Callable[[re.Match], str | object | None]]] = [
    (re.compile(r"^entropy_bottleneck\._(?P<kind>matrix|bias|factor)(?P<j>\d+)$"),
     lambda m: f"entropy_bottleneck.{_BOTTLENECK_NAMES[m['kind']]}.{m['j']}"),
    (re.compile(r"^(?P<key>(entropy_bottleneck|gaussian_conditional)\..+)$"), lambda m: m["key"]),
    (re.compile(r"^g_a\.analysis_transform\.(?P<rest>.+)$"), lambda m: f"g_a.{m['rest']}"),
    (re.compile(r"^g_s\.synthesis_transform\.(?P<k>\d+)\.(?P<sub>subpel_conv\.)?(?P<rest>.+)$"),
     lambda m: f"g_s.{m['k']}.{'subpel.' if m['sub'] else ''}{m['rest']}"),
    (re.compile(r"^h_a\.reduction\.(?P<rest>.+)$"), lambda m: f"h_a.{m['rest']}"),
    (re.compile(r"^h_s\.increase\.(?P<rest>.+)$"), lambda m: f"h_s.{m['rest']}"),
    (re.compile(r"^entropy_parameters_(?P<half>anchor|nonanchor)\.(?P<i>\d+)\.fusion\.(?P<rest>.+)$"),
     lambda m: f"entropy_parameters_{m['half']}.{m['i']}.0.{m['rest']}"),
    (re.compile(r"^lrp_(?P<half>anchor|nonanchor)\.(?P<i>\d+)\.lrp_transform\.(?P<rest>.+)$"),
     lambda m: f"lrp_{m['half']}.{m['i']}.convs.{m['rest']}"),
    (re.compile(r"^channel_context\.(?P<i>[1-9]\d*)\.fushion\.(?P<rest>.+)$"),
     lambda m: _shifted(m, "channel_context.{}.0.{}")),
    (re.compile(r"^global_(?P<kind>inter|intra)_context\.(?P<i>[1-9]\d*)\.(?P<rest>.+)$"), _global_context),
    (re.compile(r"^local_context\.(?P<i>\d+)\.(?P<rest>.+)$"), _local_context),
]  # fmt: skip


def project_key(official_key: str) -> str | object | None:
    """Our key for an official key (module prefix already stripped), DROP, or None when no rule knows it."""
    for pattern, target in RULES:
        if match := pattern.match(official_key):
            return target(match)
    return None


def qkv_rows(channels: int = 32, heads: int = 2) -> Tensor:
    """The official qkv rows in our order: ours[t*C + p] = official[t*C + (p mod hd)*heads + p div hd]."""
    head_dim = channels // heads
    p = torch.arange(channels)
    block = (p % head_dim) * heads + p // head_dim
    return torch.cat([t * channels + block for t in range(3)])


def read_official(path: Path) -> dict[str, Tensor]:
    """The state dict of an official checkpoint file, without a data-parallel prefix; refuses anything else."""
    if not path.is_file():
        raise LicError(f"{path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for foreign objects, others for damaged files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LicError(
            f"{path} does not load as plain weights (torch.load weights_only=True): {reason}. "
            "Refusing to unpickle it: a checkpoint file can run code when unpickled"
        ) from err
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise LicError(f"{path} holds no state dict of tensors (expected an official training checkpoint)")
    if all(key.startswith(DATA_PARALLEL_PREFIX) for key in state):
        state = {key[len(DATA_PARALLEL_PREFIX) :]: value for key, value in state.items()}
    return state


def map_state_dict(official: dict[str, Tensor], model: torch.nn.Module, source: str) -> dict[str, Tensor]:
    """Our model's state dict filled from `official` by the rules; one LicError lists every problem."""
    if any(OLD_MLICPP_KEYS.match(key) for key in official):
        raise LicError(
            "these are 2023 MLIC++ weights (LatentResidualPredictionOld and SynthesisTransformOld: other layer "
            "shapes, 116.7 M parameters), which lic does not support; use the 2024 MLIC++ weights"
        )
    ours = model.state_dict()
    mapped: dict[str, Tensor] = {}
    claimed: set[str] = set()  # our keys some official tensor was meant for, fitting or not
    unknown, misshaped = [], []
    for key, tensor in official.items():
        target = project_key(key)
        if target is DROP or key in CODER_BUFFERS:
            continue
        if target is None or target not in ours or target in claimed:
            unknown.append(key)
            continue
        claimed.add(target)
        if tensor.shape != ours[target].shape:
            misshaped.append(f"{key} {_shape(tensor)} (model {_shape(ours[target])})")
            continue
        if QKV_KEY.match(target):
            tensor = tensor[qkv_rows(tensor.shape[0] // 3, model.local_context[0].heads)]
        mapped[target] = tensor.to(ours[target].dtype)
    missing = [key for key in ours if key not in claimed and key not in CODER_BUFFERS]
    problems = [
        f"{len(items)} {kind}: {_listing(items)}"
        for kind, items in (("unknown keys", unknown), ("missing keys", missing), ("mis-shaped", misshaped))
        if items
    ]
    if problems:
        raise LicError(f"not a {source} checkpoint of {model.spec.name}: " + "; ".join(problems))
    return {**mapped, **{key: ours[key] for key in CODER_BUFFERS}}  # our own (empty) tables, rebuilt on save


def import_official(path: Path, source: str) -> torch.nn.Module:
    """Our model (eval mode, coder tables not yet built) with the weights of the official checkpoint at `path`."""
    if source not in SOURCES:
        raise LicError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")
    model = build(SOURCES[source])
    official = read_official(path)
    try:
        state = map_state_dict(official, model, source)
    except LicError as err:
        raise LicError(f"{path}: {err}") from err
    model.load_state_dict(state)
    return model.eval()


def _listing(items: list[str]) -> str:
    return ", ".join(items[:SHOWN]) + (f", ... ({len(items) - SHOWN} more)" if items[SHOWN:] else "")


def _shape(tensor: Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"


def import_checkpoint(
    path: Path, source: str, out: Path, *, lmbda: float | None = None, metric: str | None = None
) -> Path:
    """Map the official checkpoint at `path` and write it to `out` as a lic checkpoint (coder tables rebuilt).

    The metadata records where the weights came from and, when given, the rate point (lmbda, metric) that
    registration names the model by.
    """
    from lic.checkpoint import save_checkpoint
    from lic.io.checksums import file_digest
    from lic.registry.naming import registered_name

    rate_point = {}
    if lmbda is not None or metric is not None:
        if lmbda is None or metric is None:
            raise LicError("give both --lmbda and --metric (the rate point the weights were trained for), or neither")
        registered_name(SOURCES.get(source, source), metric, lmbda)  # validates both
        rate_point = {"lmbda": float(lmbda), "metric": metric}
    model = import_official(path, source)
    return save_checkpoint(
        out, model, **rate_point, imported_from=source, source_file=path.name, source_sha256=file_digest(path, "sha256")
    )
