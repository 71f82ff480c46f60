"""Context models of the MLIC++ multi-reference entropy model (spec §2.3-2.6).

Every module here only sees what the decoder already has when it runs: previous slices, or the anchor half of
the current slice. That is what makes them usable for entropy coding.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lic.models.checkerboard import window_exclusions
from lic.models.layers import ConvMLP, DepthwiseProjection, conv_stack, efficient_attention


@functools.lru_cache(maxsize=8)
def border_mask(height: int, width: int, window: int, device: torch.device) -> Tensor:
    """The additive attention mask of LocalContext for one latent size, shared by every slice (cached).

    The official code adds -100 to every excluded pair (`window_exclusions`). On a valid query's excluded keys
    that gives weights of e^-100 = 4e-44, subnormal floats that make the CPU's softmax 2x slower; -inf on exactly
    those pairs is the same attention to within float rounding (measured 8e-7) without subnormals. The rows the
    official code shifts by -100 as a whole get 0 here, the same softmax. No row is all -inf (a valid query's
    own slot is a valid key), so nothing turns into NaN.
    """
    with torch.inference_mode(False):  # a plain tensor, usable in training after a cached call from the codec
        excluded = window_exclusions(height, width, window, device)
        return torch.zeros(excluded.shape, device=device).masked_fill_(excluded, float("-inf"))


class LocalContext(nn.Module):
    """Checkerboard-masked 5x5 window attention over the anchors of the current slice, then a 5x5 fusion conv."""

    def __init__(self, dim: int = 32, out_dim: int = 64, heads: int = 2, window: int = 5) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3)
        self.scale = (dim // heads) ** -0.5
        self.position_bias = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.position_bias, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1
        self.register_buffer("position_index", relative[..., 0] * (2 * window - 1) + relative[..., 1], False)
        self.fusion = nn.Conv2d(dim, out_dim, window)
        self.proj = nn.Linear(out_dim, out_dim)
        self.mlp = nn.Sequential(
            nn.LayerNorm(out_dim), nn.Linear(out_dim, out_dim * 2), nn.GELU(), nn.Linear(out_dim * 2, out_dim)
        )

    def forward(self, x: Tensor, at: Tensor | None = None) -> Tensor:
        """B x out_dim x H x W; with `at` (flat positions), only the windows centred there: B x out_dim x len(at).

        Every output depends only on the window around its position, so the windows whose output is not used
        need not be computed; the others come out the same.
        """
        b, c, h, w = x.shape
        k2 = self.window**2
        qkv = self.qkv(self.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)  # B x 3C x H x W
        mask = border_mask(h, w, self.window, x.device)  # HW x K2 x K2
        if at is None:
            windows = F.unfold(qkv, self.window, padding=self.window // 2)  # B x 3C*K2 x HW
        else:
            windows, mask = self._windows_at(qkv, at), mask.index_select(0, at)

        n = windows.shape[-1]
        windows = windows.view(b, 3, self.heads, c // self.heads, k2, n).permute(1, 0, 5, 2, 4, 3)
        q, k, v = windows[0] * self.scale, windows[1], windows[2]  # B x N x heads x K2 x d
        # The mask holds only 0 and -inf, so adding it to the bias first changes no sum, and saves a pass
        bias = self.position_bias[self.position_index].permute(2, 0, 1) + mask[:, None]  # N x heads x K2 x K2
        attn = (q @ k.transpose(-2, -1) + bias).softmax(dim=-1)
        out = (attn @ v).permute(0, 1, 2, 4, 3).reshape(b * n, c * k2)
        # The fusion conv covers each window exactly once: as one matrix multiply it runs 2.5x faster than the conv.
        out = self.proj(F.linear(out, self.fusion.weight.flatten(1), self.fusion.bias).view(b, n, -1))
        out = (out + self.mlp(out)).transpose(1, 2)  # B x out_dim x N
        return out if at is not None else out.reshape(b, -1, h, w)

    def _windows_at(self, qkv: Tensor, at: Tensor) -> Tensor:
        """What `F.unfold(qkv, window, padding)[..., at]` gives (B x 3C*K2 x len(at), the same values in the same
        layout) in one gather from the zero-padded map: a third of the time of unfolding every position and then
        selecting half of them (the coder's case: at = the non-anchors). The gather is an index_select along one
        flat index; indexing with the 2-D index took 25x longer (26 ms a slice at 768x512)."""
        b, c, _, w = qkv.shape
        pad, k = self.window // 2, self.window
        stride = w + 2 * pad  # a row of the padded map
        padded = F.pad(qkv.contiguous(), (pad, pad, pad, pad)).flatten(2)  # B x 3C x (H+2p)(W+2p)
        steps = torch.arange(k, device=at.device)
        offsets = (steps[:, None] * stride + steps[None, :]).flatten()  # window element -> offset from its top-left
        corners = (at // w) * stride + at % w  # each window's top-left, in the padded map
        return padded.index_select(2, (offsets[:, None] + corners[None, :]).flatten()).view(b, c * k * k, len(at))


class ChannelContext(nn.Sequential):
    """Three 3x3 convs over all previously decoded slices."""

    def __init__(self, in_dim: int, out_dim: int = 128) -> None:
        super().__init__(conv_stack([in_dim, 192, out_dim, out_dim], 3))


class GlobalInterContext(nn.Module):
    """Linear attention across previous slices: one head per previous slice, linear in the number of positions."""

    def __init__(self, dim: int, out_dim: int = 64, heads: int = 1) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (DepthwiseProjection(dim) for _ in range(3))
        self.reprojection = nn.Conv2d(dim, 96, 5, padding=2)
        self.skip = nn.Conv2d(96, out_dim, 1)
        self.mlp = ConvMLP(96, 128, out_dim)

    def forward(self, previous: Tensor) -> Tensor:
        b, c, h, w = previous.shape
        q, k, v = (proj(previous).flatten(2) for proj in (self.query, self.key, self.value))
        out = self.reprojection(efficient_attention(q, k, v, self.heads).view(b, c, h, w))
        return self.skip(out) + self.mlp(out)


class GlobalIntraContext(nn.Module):
    """Linear attention within a slice.

    Where non-anchors of the previous slice attend to its anchors is learned there, and that attention map is
    applied to the anchors of the current slice, which the decoder already has.
    """

    def __init__(self, dim: int = 32, out_dim: int = 64, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (DepthwiseProjection(dim) for _ in range(3))
        self.reprojection = nn.Conv2d(dim, out_dim, 5, padding=2)
        self.mlp = ConvMLP(out_dim, 128, out_dim)

    def forward(self, previous_slice: Tensor, current_anchors: Tensor, anchors: Tensor) -> Tensor:
        """`anchors` is the 1 x 1 x H x W anchor mask of the latent grid."""
        b, c, h, w = previous_slice.shape
        is_anchor = anchors.flatten().bool()
        q = self.query(previous_slice * (1 - anchors)).flatten(2)[..., ~is_anchor]
        k = self.key(previous_slice * anchors).flatten(2)[..., is_anchor]
        v = self.value(current_anchors).flatten(2)[..., is_anchor]
        attended = efficient_attention(q, k, v, self.heads)
        out = attended.new_zeros(b, c, h * w)  # attended's dtype: bfloat16 under autocast, float32 otherwise
        out[..., ~is_anchor] = attended
        out = self.reprojection(out.view(b, c, h, w))
        return out + self.mlp(out)


class EntropyParameters(nn.Sequential):
    """1x1 convs from the gathered contexts to (scales, means) of one checkerboard half of one slice."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(conv_stack([in_dim, 320, 256, 128, out_dim], 1))


class LatentResidualPrediction(nn.Module):
    """Predicts the quantisation residual of a slice from the hyper means and decoded slices, bounded to +-0.5."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.convs = conv_stack([in_dim, 224, 128, out_dim], 3)

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * torch.tanh(self.convs(x))
