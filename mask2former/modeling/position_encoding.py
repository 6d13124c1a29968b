"""Sine positional encodings of 2D feature maps (DETR, Carion et al. 2020) and of clips of
feature maps (Mask2Former for video, Cheng et al. 2021)."""

import math
from typing import Optional

import torch
from torch import nn

__all__ = ["PositionEmbeddingSine", "PositionEmbeddingSine3D"]


class PositionEmbeddingSine(nn.Module):
    """Fixed sine/cosine embedding of the (y, x) position of every pixel of a feature map.

    For a position p (the count of valid pixels up to and including this one along an axis,
    optionally normalised to ``(0, scale]``) and channel pair i in ``[0, num_pos_feats / 2)``,
    the embedding is ``sin(p / T^(2i / F))`` and ``cos(p / T^(2i / F))`` with
    ``T = temperature`` and ``F = num_pos_feats``, interleaved. The y half comes first.

    Computed on the fly (no cache) in float32 whatever the autocast state, then cast to the
    dtype of the input feature map. The module has no parameters.
    """

    def __init__(
        self,
        num_pos_feats: int = 64,
        temperature: float = 10000.0,
        normalize: bool = False,
        scale: Optional[float] = None,
    ):
        """
        Args:
            num_pos_feats: channels per axis; the output has ``2 * num_pos_feats`` channels.
                Must be even.
            temperature: the wavelength base T.
            normalize: divide positions by the valid extent of each axis, then multiply by
                ``scale``, so positions do not depend on the map size.
            scale: the normalised range; 2 pi when None. Only valid with ``normalize``.
        """
        super().__init__()
        if num_pos_feats % 2 != 0:
            raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}.")
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: scale is only used with normalize=True.")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            x: (N, C, H, W) feature map; only its shape, device and dtype are used.
            mask: optional (N, H, W) bool, True at padded pixels (they do not count as
                positions). None means no padding.

        Returns:
            (N, 2 * num_pos_feats, H, W) embedding, values in [-1, 1].
        """
        batch, _, height, width = x.shape
        dtype = x.dtype if x.is_floating_point() else torch.float32
        if mask is None:
            # Same for every image: compute once and broadcast over the batch.
            not_mask = torch.ones((1, height, width), device=x.device, dtype=torch.bool)
        else:
            not_mask = ~mask
        y_embed = self._positions(not_mask, 1)
        x_embed = self._positions(not_mask, 2)
        dim_t = self._wavelengths(self.num_pos_feats, x.device)
        pos = torch.cat((self._interleave(y_embed, dim_t), self._interleave(x_embed, dim_t)), 3)
        pos = pos.permute(0, 3, 1, 2).to(dtype)
        return pos.expand(batch, -1, -1, -1) if mask is None else pos

    def _positions(self, not_mask: torch.Tensor, dim: int) -> torch.Tensor:
        """Count of valid positions up to and including each one along ``dim``, float32;
        divided by the last count (+ 1e-6) and times ``scale`` when ``normalize``."""
        embed = not_mask.cumsum(dim, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            last = embed.narrow(dim, embed.shape[dim] - 1, 1)
            embed = embed / (last + eps) * self.scale
        return embed

    def _wavelengths(self, num_feats: int, device: torch.device) -> torch.Tensor:
        """(num_feats,) float32 divisors ``T^(2 * (i // 2) / num_feats)``."""
        dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
        return self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)

    @staticmethod
    def _interleave(embed: torch.Tensor, dim_t: torch.Tensor) -> torch.Tensor:
        """(*S) positions -> (*S, F) for F = len(dim_t): sin on even channels, cos on odd."""
        phase = embed[..., None] / dim_t
        return torch.stack((phase[..., 0::2].sin(), phase[..., 1::2].cos()), dim=-1).flatten(-2)


class PositionEmbeddingSine3D(PositionEmbeddingSine):
    """Fixed sine/cosine embedding of the (t, y, x) position of every pixel of a clip.

    The y and x parts are those of :class:`PositionEmbeddingSine` (``F = num_pos_feats``
    channels each, y first); the t part has ``2 F`` channels, with wavelengths
    ``T^(2i / (2F))``, and is added to both: ``cat(y_part, x_part) + t_part``. Positions along
    t count the valid frames like those along y and x count the valid pixels (normalised the
    same way with ``normalize``). The arguments are those of :class:`PositionEmbeddingSine`.
    """

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            x: (N, T, C, H, W) clips of feature maps; only the shape, device and dtype are used.
            mask: optional (N, T, H, W) bool, True at padded pixels. None means no padding.

        Returns:
            (N, T, 2 * num_pos_feats, H, W) embedding, values in [-2, 2].
        """
        batch, frames, _, height, width = x.shape
        dtype = x.dtype if x.is_floating_point() else torch.float32
        if mask is None:
            not_mask = torch.ones((1, frames, height, width), device=x.device, dtype=torch.bool)
        else:
            not_mask = ~mask
        dim_t = self._wavelengths(self.num_pos_feats, x.device)
        dim_t_frames = self._wavelengths(2 * self.num_pos_feats, x.device)
        pos = torch.cat(
            (
                self._interleave(self._positions(not_mask, 2), dim_t),
                self._interleave(self._positions(not_mask, 3), dim_t),
            ),
            4,
        )
        pos = pos + self._interleave(self._positions(not_mask, 1), dim_t_frames)
        pos = pos.permute(0, 1, 4, 2, 3).to(dtype)
        return pos.expand(batch, -1, -1, -1, -1) if mask is None else pos
