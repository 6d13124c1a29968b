"""Sine positional encoding of 2D feature maps (DETR, Carion et al. 2020)."""

import math
from typing import Optional

import torch
from torch import nn

__all__ = ["PositionEmbeddingSine"]


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
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (
            2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats
        )
        pos = torch.cat((self._interleave(y_embed, dim_t), self._interleave(x_embed, dim_t)), 3)
        pos = pos.permute(0, 3, 1, 2).to(dtype)
        return pos.expand(batch, -1, -1, -1) if mask is None else pos

    @staticmethod
    def _interleave(embed: torch.Tensor, dim_t: torch.Tensor) -> torch.Tensor:
        """(N, H, W) positions -> (N, H, W, F): sin on even channels, cos on odd ones."""
        phase = embed[..., None] / dim_t
        return torch.stack((phase[..., 0::2].sin(), phase[..., 1::2].cos()), dim=4).flatten(3)
