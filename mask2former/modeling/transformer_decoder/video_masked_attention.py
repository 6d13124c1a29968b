"""Mask2Former's transformer decoder for video: masked cross-attention over the features of
all frames of a clip (Mask2Former for video instance segmentation, Cheng et al. 2021).

Shape legend:
    N: videos, T: frames per video, Q: queries, C: hidden dim, K: classes,
    H_l, W_l: size of feature level l, H, W: size of the mask features (1/4 of the frame).
Sequences inside the decoder are sequence-first: queries (Q, N, C), memory
(T * H_l * W_l, N, C) with the frame outermost.
"""

from typing import Dict

import torch
from detectron2.config import configurable

from ..position_encoding import PositionEmbeddingSine3D
from .build import TRANSFORMER_DECODER_REGISTRY
from .masked_attention import MultiScaleMaskedTransformerDecoder

__all__ = ["VideoMultiScaleMaskedTransformerDecoder"]


@TRANSFORMER_DECODER_REGISTRY.register()
class VideoMultiScaleMaskedTransformerDecoder(MultiScaleMaskedTransformerDecoder):
    """The image decoder with one set of queries per video instead of per image.

    It receives the pixel decoder's features of N * T frames, the frames of a video
    consecutive. In training each video has ``num_frames`` frames; in eval mode the whole
    input is ONE video (N = 1, T = the number of frames given). A query attends to the tokens
    of all T frames at once (memory of level l: (T * H_l * W_l, N, C)), with a 3D sine
    position embedding, and predicts one mask per frame: the einsum of its mask embedding
    with every frame's mask features. The attention mask of the next level is that
    prediction resized frame by frame to the level, hidden where the probability is below
    ``mask_threshold``; a query hidden everywhere attends everywhere.

    Called as ``forward(multi_scale_features, mask_features)`` with maps
    (N * T, in_channels, H_l, W_l) and (N * T, mask_dim, H, W); returns "pred_logits"
    (N, Q, K + 1), "pred_masks" (N, Q, T, H, W) logits and "aux_outputs" of the same shapes,
    and in eval mode "pred_embeddings" (N, Q, C), the final queries after ``decoder_norm``,
    which link the clips of a long video (``VideoMaskFormer``'s TEST.CLIP_LENGTH).

    The parameters are exactly the image decoder's (the official video checkpoints have its
    keys), and both eval paths of the image decoder (``aux_outputs_in_eval``) work the same.
    """

    @configurable
    def __init__(self, in_channels: int, *, num_frames: int, **kwargs):
        """
        Args:
            in_channels: channels of the multi-scale features.
            num_frames: frames per video in training (INPUT.SAMPLING_FRAME_NUM).
            kwargs: the arguments of :class:`MultiScaleMaskedTransformerDecoder`.
        """
        super().__init__(in_channels, **kwargs)
        if num_frames < 1:
            raise ValueError(
                f"VideoMultiScaleMaskedTransformerDecoder: num_frames (INPUT.SAMPLING_FRAME_NUM) "
                f"must be >= 1, got {num_frames}."
            )
        self.num_frames = num_frames
        self.pe_layer = PositionEmbeddingSine3D(self.pe_layer.num_pos_feats, normalize=True)
        self.query_embeddings_in_eval = True

    @classmethod
    def from_config(cls, cfg, in_channels: int) -> Dict:
        return {
            **super().from_config(cfg, in_channels),
            "num_frames": cfg.INPUT.SAMPLING_FRAME_NUM,
        }

    def _group_frames(self, tensor: torch.Tensor) -> torch.Tensor:
        """(N * T, ...) -> (N, T, ...): T = ``num_frames`` in training, all frames in eval."""
        if len(tensor) == 0:
            raise ValueError("VideoMultiScaleMaskedTransformerDecoder: got features of 0 frames.")
        frames = self.num_frames if self.training else len(tensor)
        if len(tensor) % frames != 0:
            raise ValueError(
                f"VideoMultiScaleMaskedTransformerDecoder: got features of {len(tensor)} frames "
                f"in training, not a multiple of num_frames={frames} "
                "(INPUT.SAMPLING_FRAME_NUM); give every training clip that many frames."
            )
        return tensor.unflatten(0, (-1, frames))

    def _mask_logits(self, decoded: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        """(N, Q, C) normalized queries -> mask logits (N, Q, T, h, w) on (N, T, mask_dim,
        h, w)."""
        return torch.einsum("nqc,ntchw->nqthw", self.mask_embed(decoded), mask_features)
