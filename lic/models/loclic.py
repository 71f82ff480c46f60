"""LoC-LIC: hierarchical transforms with the MLIC++ multi-reference entropy model (spec §1-3).

The slice loop is written once (`_slices`) and shared by training, compression and decompression. What differs
between the three is only how one checkerboard half of a slice becomes ŷ, which a `HalfCoder` decides:
straight-through rounding in `forward`, rANS encoding in `compress`, rANS decoding in `decompress`. Sharing the
loop is what makes the decoder recompute exactly the contexts the encoder used, and makes an eval-mode forward
pass reconstruct exactly what the real codec does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Annotated, Any

import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models import CompressionModel
from compressai.models.base import get_scale_table
from compressai.ops import quantize_ste
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator
from torch import Tensor, nn

from lic.models.checkerboard import anchor_mask
from lic.models.context import (
    ChannelContext,
    EntropyParameters,
    GlobalInterContext,
    GlobalIntraContext,
    LatentResidualPrediction,
    LocalContext,
)
from lic.models.halves import convolutions_in_halves, side_by_side
from lic.models.inputs import check_images
from lic.models.transforms import analysis_transform, hyper_analysis, hyper_synthesis, synthesis_transform

# (y at the half's positions, or None when decoding; their scales; their means) -> ŷ there; all B x C x positions
HalfCoder = Callable[[Tensor | None, Tensor, Tensor], Tensor]

# CompressAI's default table has 64 scales from 0.11 to 256, 13% apart; coding rounds each scale up to the next
# entry, which cost 1.3% of the y rate on a trained model here. 256 entries (3% apart) bring the coded size
# within 1% of the likelihood estimate for 2.4 MB more CDF tables in the checkpoint.
SCALE_TABLE_SIZE = 256

# LocalContext's windows are computed in two shares, always (so the arithmetic is the same on one core and in
# training), which lic.models.halves.side_by_side runs on the two threads while coding on two cores: each window's
# output is the same whichever windows are computed with it. The lane thread also runs GlobalIntraContext (5 ms a
# slice at 768x512 on one thread, against LocalContext's 20), so the coding thread takes this share of the windows
# and both finish together.
LOCAL_SHARE_BESIDE_INTRA = 0.625


class LoCLICConfig(BaseModel):
    """LoC-LIC's architecture: each knob once, with its type, range and default (the paper's model).

    A checkpoint's config is validated against this before anything is built, so a forged one is a clear error
    instead of a TypeError or an allocation without bound (M = 200000 asks for 1.44 TB). The largest allowed
    model (N 512/512/512, M 640, 32 slices) has 453 M parameters and took 2.7 GB to build here.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    N: Annotated[list[Annotated[StrictInt, Field(ge=1, le=512)]], Field(min_length=3, max_length=3)] = [32, 64, 128]
    """Widths of the three analysis/synthesis levels (three levels and a last stride: y at 1/16)."""
    M: Annotated[StrictInt, Field(ge=1, le=640)] = 320
    """Channels of the latent y."""
    slices: Annotated[StrictInt, Field(ge=1, le=32)] = 10
    """Channel slices of the multi-reference entropy model; M must be a multiple of it."""

    @model_validator(mode="after")
    def _slices_divide_m(self) -> LoCLICConfig:
        if self.M % self.slices:
            raise ValueError(f"M={self.M} must be divisible by slices={self.slices}")
        return self


class LoCLIC(CompressionModel):
    """Learned image codec; x in [0, 1], B x 3 x H x W with H and W multiples of `downsampling`.

    Built through `lic.models.build`, which validates the configuration (LoCLICConfig) first."""

    downsampling = 64  # z sits at H/64; the checkerboard needs an even latent width

    def __init__(self, N: Sequence[int], M: int, slices: int) -> None:  # noqa: N803
        super().__init__()
        self.config = {"N": list(N), "M": M, "slices": slices}
        self.num_slices, sc, hyper = slices, M // slices, N[-1]
        self.slice_channels = sc

        self.g_a = analysis_transform(N, M)
        self.g_s = synthesis_transform(N, M)
        self.h_a = hyper_analysis(M, hyper)
        self.h_s = hyper_synthesis(M, hyper)
        self.entropy_bottleneck = EntropyBottleneck(hyper)
        self.gaussian_conditional = GaussianConditional(None)

        later = range(1, slices)  # slice 0 has no previous slices, so no channel or global context
        self.local_context = nn.ModuleList(LocalContext(sc, 64) for _ in range(slices))
        self.channel_context = nn.ModuleList(ChannelContext(sc * i, 128) for i in later)
        self.global_inter_context = nn.ModuleList(GlobalInterContext(sc * i, 64, heads=i) for i in later)
        self.global_intra_context = nn.ModuleList(GlobalIntraContext(sc, 64) for _ in later)
        hyper_dim = 2 * M
        self.entropy_parameters_anchor = nn.ModuleList(
            EntropyParameters(hyper_dim + (192 if i else 0), 2 * sc) for i in range(slices)
        )
        self.entropy_parameters_nonanchor = nn.ModuleList(
            EntropyParameters(hyper_dim + (320 if i else 64), 2 * sc) for i in range(slices)
        )
        self.lrp_anchor = nn.ModuleList(LatentResidualPrediction(M + sc * (i + 1), sc) for i in range(slices))
        self.lrp_nonanchor = nn.ModuleList(LatentResidualPrediction(M + sc * (i + 1), sc) for i in range(slices))
        self._coding_tables: tuple[list, list[int], list[int]] | None = None

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any]) -> LoCLIC:
        """The model a state dict (or a whole lic checkpoint) holds, with its config read off the weights.

        CompressAI's tools (`python -m compressai.utils.eval_model checkpoint`) load models this way: they know
        the architecture, not its config. A lic checkpoint records the config; a bare state dict gives it by its
        shapes (`config_from_state_dict`).
        """
        if "state_dict" in state_dict and "config" in state_dict:
            config, state_dict = state_dict["config"], state_dict["state_dict"]
        else:
            config = config_from_state_dict(state_dict)
        model = cls(**LoCLICConfig.model_validate(config).model_dump())  # a checkpoint's config omits defaults
        model.load_state_dict(state_dict)
        return model

    def update(self, scale_table: Tensor | None = None, force: bool = False, update_quantiles: bool = False) -> bool:
        """Rebuild the CDF tables (LoC-LIC's finer scale table unless one is given)."""
        self._coding_tables = None
        if scale_table is None:
            scale_table = get_scale_table(0.11, 256, SCALE_TABLE_SIZE)
        return super().update(scale_table, force=force, update_quantiles=update_quantiles)

    def load_state_dict(self, state_dict, strict: bool = True):
        self._coding_tables = None
        return super().load_state_dict(state_dict, strict=strict)

    def _tables(self) -> tuple[list, list[int], list[int]]:
        """The CDF tables as the rANS coder wants them (Python lists), converted once per update or load."""
        gc = self.gaussian_conditional
        if gc._offset.numel() == 0:
            raise ValueError("Uninitialized CDFs. Run update() first (checkpoints saved by lic already contain them)")
        if self._coding_tables is None:
            self._coding_tables = (
                gc.quantized_cdf.tolist(),
                gc.cdf_length.reshape(-1).int().tolist(),
                gc.offset.reshape(-1).int().tolist(),
            )
        return self._coding_tables

    def _coder_arguments(self, scales: Tensor) -> tuple[list[int], list[list[int]], list[int], list[int]]:
        """The CDF index of every scale, and the tables those indexes use: what one rANS coder call takes.

        The coder takes its tables as Python lists, and pybind11 converts every table it is given on every call:
        all 256 are 0.8 M integers, 10 ms a call, 200 ms of each 768x512 decode over the 20 half-slices. Only
        the tables this call uses are passed, renumbered; each symbol is coded with the same CDF, so the bytes
        are identical. The index is CompressAI's GaussianConditional.build_indexes, in one bucketize instead of a
        pass per table entry.
        """
        gc = self.gaussian_conditional
        indexes = torch.bucketize(gc.lower_bound_scale(scales), gc.scale_table[:-1])
        used, renumbered = torch.unique(indexes, return_inverse=True)
        cdfs, lengths, offsets = self._tables()
        used = used.tolist()
        return (
            renumbered.int().tolist(),
            [cdfs[i] for i in used],
            [lengths[i] for i in used],
            [offsets[i] for i in used],
        )

    # --- the shared slice loop ------------------------------------------------------------------------------

    def _slices(self, hyper_params: Tensor, code_half: HalfCoder, y: Tensor | None = None):
        """Run the multi-reference entropy model over all slices; returns ŷ and the per-element scales/means.

        The parameter networks (1x1 convs) and LocalContext (whose output feeds only the non-anchor parameters)
        are position-wise after their inputs, so they run only on the half of the positions whose parameters are
        used: half the work, the same numbers at those positions. The half coders work on those positions alone
        too (gathered in raster order, the order of the rANS symbols), and their ŷ is scattered into a map that
        is zero at the other half, as masking gave before.
        """
        hyper_means = hyper_params.chunk(2, dim=1)[1]
        b, _, h, w = hyper_params.shape
        anchors = anchor_mask(h, w, hyper_params.device)
        nonanchors = 1 - anchors
        anchor_at = anchors.flatten().nonzero().squeeze(1)
        nonanchor_at = nonanchors.flatten().nonzero().squeeze(1)

        def at_positions(x: Tensor, at: Tensor) -> Tensor:
            """B x C x H x W -> B x C x len(at)."""
            return x.flatten(2).index_select(2, at)

        def as_map(*halves: tuple[Tensor, Tensor]) -> Tensor:
            """B x C x H x W holding each (values, at) of `halves` at its positions, zeros elsewhere."""
            full = halves[0][0].new_zeros(b, halves[0][0].shape[1], h * w)
            for values, at in halves:
                full.index_copy_(2, at, values)
            return full.view(b, -1, h, w)

        def parameters(net: nn.Module, contexts: list[Tensor], at: Tensor) -> tuple[Tensor, Tensor]:
            """(scales, means) of one half at its positions `at`: `net` on the contexts gathered there."""
            gathered = torch.cat([c if c.dim() == 3 else at_positions(c, at) for c in contexts], dim=1)
            return net(gathered.unsqueeze(2)).squeeze(2).chunk(2, dim=1)

        def local_beside(i: int, y_hat_a: Tensor, other: Callable[[], Tensor] | None) -> tuple[Tensor, Tensor | None]:
            """LocalContext of slice i at the non-anchors, and other(), side by side: this thread computes a share
            of the windows (half, or LOCAL_SHARE_BESIDE_INTRA beside `other`), the other thread `other` and the
            rest of the windows."""
            share = 0.5 if other is None else LOCAL_SHARE_BESIDE_INTRA
            here_at, there_at = nonanchor_at.tensor_split([round(len(nonanchor_at) * share)])

            def there() -> tuple[Tensor | None, Tensor]:
                return (None if other is None else other()), self.local_context[i](y_hat_a, there_at)

            here, (others, rest) = side_by_side(partial(self.local_context[i], y_hat_a, here_at), there)
            return torch.cat([here, rest], 2), others

        y_slices = y.chunk(self.num_slices, dim=1) if y is not None else [None] * self.num_slices
        decoded: list[Tensor] = []
        scales_all, means_all = [], []
        for i, y_i in enumerate(y_slices):
            if i == 0:
                anchor_context = [hyper_params]
            else:
                previous = torch.cat(decoded, dim=1)
                inter, channel = side_by_side(
                    partial(self.global_inter_context[i - 1], previous), partial(self.channel_context[i - 1], previous)
                )
                anchor_context = [inter, channel, hyper_params]
            scales_a, means_a = parameters(self.entropy_parameters_anchor[i], anchor_context, anchor_at)
            y_a = None if y_i is None else at_positions(y_i, anchor_at)
            y_hat_a = as_map((code_half(y_a, scales_a, means_a), anchor_at))
            y_hat_a = y_hat_a + anchors * self.lrp_anchor[i](torch.cat([hyper_means, *decoded, y_hat_a], 1))

            if i == 0:
                local, _ = local_beside(i, y_hat_a, None)  # B x 64 x (non-anchor positions)
                nonanchor_context = [local, hyper_params]
            else:
                local, intra = local_beside(
                    i, y_hat_a, partial(self.global_intra_context[i - 1], decoded[-1], y_hat_a, anchors)
                )
                nonanchor_context = [local, intra, inter, channel, hyper_params]
            scales_n, means_n = parameters(self.entropy_parameters_nonanchor[i], nonanchor_context, nonanchor_at)
            y_n = None if y_i is None else at_positions(y_i, nonanchor_at)
            y_hat_i = y_hat_a + as_map((code_half(y_n, scales_n, means_n), nonanchor_at))
            y_hat_i = y_hat_i + nonanchors * self.lrp_nonanchor[i](torch.cat([hyper_means, *decoded, y_hat_i], 1))

            decoded.append(y_hat_i)
            scales_all.append(as_map((scales_a, anchor_at), (scales_n, nonanchor_at)))
            means_all.append(as_map((means_a, anchor_at), (means_n, nonanchor_at)))
        return torch.cat(decoded, 1), torch.cat(scales_all, 1), torch.cat(means_all, 1)

    # --- training / estimation -------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> dict[str, Any]:
        """Mixed quantisation: noise inside the likelihoods, straight-through rounding for everything decoded."""
        check_images(x, self.downsampling)
        y = self.g_a(x)
        z = self.h_a(y)
        _, z_likelihoods = self.entropy_bottleneck(z)
        medians = self.entropy_bottleneck._get_medians()
        z_hat = quantize_ste(z - medians) + medians
        hyper_params = self.h_s(z_hat)

        def round_half(y_half: Tensor | None, scales: Tensor, means: Tensor) -> Tensor:
            return quantize_ste(y_half - means) + means

        y_hat, scales, means = self._slices(hyper_params, round_half, y)
        _, y_likelihoods = self.gaussian_conditional(y, scales, means=means)
        return {"x_hat": self.g_s(y_hat), "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    # --- real coding -----------------------------------------------------------------------------------------

    def compress(self, x: Tensor) -> dict[str, Any]:
        """Entropy-code x (1 x 3 x H x W, padded) into one y string and one z string."""
        check_images(x, self.downsampling)
        if x.shape[0] != 1:
            raise ValueError(f"compress codes one image at a time, got a batch of {x.shape[0]}")
        with convolutions_in_halves(self):
            return self._compress(x)

    def _compress(self, x: Tensor) -> dict[str, Any]:
        y = self.g_a(x)
        z = self.h_a(y)
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
        hyper_params = self.h_s(z_hat)

        encoder = BufferedRansEncoder()

        def encode_half(y_half: Tensor | None, scales: Tensor, means: Tensor) -> Tensor:
            symbols = torch.round(y_half - means)
            encoder.encode_with_indexes(symbols.flatten().int().tolist(), *self._coder_arguments(scales.flatten()))
            return symbols + means

        self._slices(hyper_params, encode_half, y)
        return {"strings": [[encoder.flush()], z_strings], "shape": z.shape[-2:]}

    def decompress(self, strings: list[list[bytes]], shape: Sequence[int]) -> dict[str, Tensor]:
        """Inverse of `compress`: recompute every context exactly as the encoder did and decode y half by half."""
        with convolutions_in_halves(self):
            return self._decompress(strings, shape)

    def _decompress(self, strings: list[list[bytes]], shape: Sequence[int]) -> dict[str, Tensor]:
        z_hat = self.entropy_bottleneck.decompress(strings[1], shape)
        hyper_params = self.h_s(z_hat)

        decoder = RansDecoder()
        decoder.set_stream(strings[0][0])

        def decode_half(_: Tensor | None, scales: Tensor, means: Tensor) -> Tensor:
            values = decoder.decode_stream(*self._coder_arguments(scales.flatten()))
            return torch.tensor(values, dtype=scales.dtype, device=scales.device).view_as(scales) + means

        y_hat, _, _ = self._slices(hyper_params, decode_half)
        return {"x_hat": self.g_s(y_hat)}


def config_from_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """LoC-LIC's config (N, M, slices) from the shapes of its weights: g_a's first conv per level gives the width
    of that level, g_a's last conv gives M, and there is one local context per slice."""
    widths, level = [], 0
    while f"g_a.{2 * level}.conv1.weight" in state_dict:
        widths.append(int(state_dict[f"g_a.{2 * level}.conv1.weight"].shape[0]))
        level += 1
    last = f"g_a.{2 * level}.weight"
    if not widths or last not in state_dict:
        raise ValueError("not a LoC-LIC state dict: no g_a levels (g_a.0.conv1.weight ... g_a.<2n>.weight)")
    slices = len({key.split(".")[1] for key in state_dict if key.startswith("local_context.")})
    return {"N": widths, "M": int(state_dict[last].shape[0]), "slices": slices}
