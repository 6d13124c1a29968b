"""Mask2Former's transformer decoder: masked cross-attention over multi-scale features.

Shape legend:
    N: batch, Q: queries, C: hidden dim, K: classes, M: attention heads,
    H_l, W_l: size of feature level l, H, W: size of the mask features (1/4 of the image).
Sequences inside the decoder are sequence-first: queries (Q, N, C), memory (H_l * W_l, N, C).
"""

from typing import Dict, List, Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d
from torch import nn

from ..layers import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer
from ..position_encoding import PositionEmbeddingSine
from .build import TRANSFORMER_DECODER_REGISTRY

__all__ = ["MultiScaleMaskedTransformerDecoder"]


@TRANSFORMER_DECODER_REGISTRY.register()
class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Learnable queries refined by masked cross-attention, self-attention and an FFN.

    Layer i attends to feature level ``i % num_feature_levels`` (round robin, lowest
    resolution first) with sine position and learnable level embeddings. Each query attends
    only where the previous prediction's mask, resized to that level, has probability of at
    least ``mask_threshold``; a query whose mask is empty attends everywhere.

    A prediction (class logits, mask logits) is made from the learnable queries before the
    first layer and after every layer, ``num_layers + 1`` in all; the last is the output and
    the others are ``aux_outputs``, which the criterion uses for deep supervision.

    Two ways to make the attention masks in eval mode, one switch apart
    (``aux_outputs_in_eval``, config ``MODEL.MASK_FORMER.TEST.AUX_OUTPUTS_IN_EVAL``):

    - False (default, fast): nothing needs the earlier predictions at full resolution, so
      they are not made: ``aux_outputs`` is empty, and each attention mask is computed
      directly at its level's resolution from mask features resized once per level.
      Resizing is linear and so is the mask prediction (a dot product per pixel), so this
      equals the official computation up to float rounding, and saves ``num_layers``
      full-size mask predictions (measured in BENCHMARKS.md, "CPU inference").
    - True (the official computation, as in training): every earlier prediction is made at
      full size, returned in ``aux_outputs``, and resized to the level for the mask.

    Parameter names are those of the official checkpoints.
    """

    @configurable
    def __init__(
        self,
        in_channels: int,
        *,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_project: bool,
        num_feature_levels: int = 3,
        mask_threshold: float = 0.5,
        aux_outputs_in_eval: bool = False,
    ):
        """
        Args:
            in_channels: channels of the multi-scale features.
            num_classes: K; the class head has K + 1 outputs, the last meaning "no object".
            hidden_dim: C, width of queries and attention.
            num_queries: Q.
            nheads: attention heads M.
            dim_feedforward: hidden width of the FFNs.
            dec_layers: number of attention layers (cross, self, FFN). Note that the config
                key MODEL.MASK_FORMER.DEC_LAYERS counts one more (the learnable-query
                prediction); ``from_config`` subtracts it.
            pre_norm: LayerNorm before (True) or after (False) each block.
            mask_dim: channels of the mask features and of the mask embeddings.
            enforce_input_project: project the features with a 1x1 conv even when
                ``in_channels == hidden_dim``.
            num_feature_levels: number of multi-scale features attended to in turn.
            mask_threshold: mask probability below which a position is hidden from a query.
            aux_outputs_in_eval: in eval mode too, make the earlier predictions at full size
                (returned in ``aux_outputs``) and the attention masks from them, as the
                official release does; False makes the masks at each level's resolution.
        """
        super().__init__()
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.mask_threshold = mask_threshold
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, dropout=0.0, normalize_before=pre_norm)
            for _ in range(dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, dropout=0.0, normalize_before=pre_norm)
            for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, dropout=0.0, normalize_before=pre_norm)
            for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)

        self.num_queries = num_queries
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)

        self.num_feature_levels = num_feature_levels
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                projection = Conv2d(in_channels, hidden_dim, kernel_size=1)
                weight_init.c2_xavier_fill(projection)
            else:
                projection = nn.Identity()
            self.input_proj.append(projection)

        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        self.aux_outputs_in_eval = aux_outputs_in_eval
        # In eval mode, also return the final queries after ``decoder_norm`` (N, Q, C) as
        # "pred_embeddings": the video decoder does, to link a long video's clips.
        self.query_embeddings_in_eval = False

    @classmethod
    def from_config(cls, cfg, in_channels: int):
        mask_former = cfg.MODEL.MASK_FORMER
        if mask_former.DEC_LAYERS < 1:
            raise ValueError(
                f"MODEL.MASK_FORMER.DEC_LAYERS must be >= 1 (it counts the prediction from the "
                f"learnable queries as a layer), got {mask_former.DEC_LAYERS}."
            )
        return {
            "in_channels": in_channels,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": mask_former.HIDDEN_DIM,
            "num_queries": mask_former.NUM_OBJECT_QUERIES,
            "nheads": mask_former.NHEADS,
            "dim_feedforward": mask_former.DIM_FEEDFORWARD,
            # DEC_LAYERS counts the learnable-query prediction as a layer.
            "dec_layers": mask_former.DEC_LAYERS - 1,
            "pre_norm": mask_former.PRE_NORM,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "enforce_input_project": mask_former.ENFORCE_INPUT_PROJ,
            "num_feature_levels": mask_former.NUM_FEATURE_LEVELS,
            "mask_threshold": mask_former.MASK_ATTENTION_THRESHOLD,
            "aux_outputs_in_eval": mask_former.TEST.AUX_OUTPUTS_IN_EVAL,
        }

    def forward(
        self,
        multi_scale_features: List[torch.Tensor],
        mask_features: torch.Tensor,
    ) -> Dict[str, object]:
        """
        Args:
            multi_scale_features: ``num_feature_levels`` maps (N, in_channels, H_l, W_l).
            mask_features: (N, mask_dim, H, W).

        Returns:
            dict with "pred_logits" (N, Q, K + 1), "pred_masks" (N, Q, H, W) logits, and
            "aux_outputs": ``num_layers`` dicts with the same keys, the earlier predictions
            (the learnable-query one first); empty in eval mode unless
            ``aux_outputs_in_eval``.
        """
        if len(multi_scale_features) != self.num_feature_levels:
            raise ValueError(
                f"Expected {self.num_feature_levels} multi-scale features, got "
                f"{len(multi_scale_features)}; the pixel decoder and the transformer decoder "
                "disagree on the number of levels."
            )
        memories, positions, sizes = [], [], []
        for level, features in enumerate(multi_scale_features):
            sizes.append(features.shape[-2:])
            positions.append(self._sequence(self.pe_layer(self._group_frames(features))))
            memory = self._group_frames(self.input_proj[level](features))
            memories.append(self._sequence(memory + self.level_embed.weight[level][:, None, None]))
        mask_features = self._group_frames(mask_features)

        batch = mask_features.shape[0]
        query_pos = self.query_embed.weight.unsqueeze(1).expand(-1, batch, -1)
        queries = self.query_feat.weight.unsqueeze(1).expand(-1, batch, -1)

        with_aux = self.training or self.aux_outputs_in_eval
        if not with_aux and self.num_layers > 0:
            # Mask features at the resolution of each level that an attention mask is made for.
            level_mask_features = [
                _resize(mask_features, size)
                for size in sizes[: min(self.num_layers, self.num_feature_levels)]
            ]

        predictions = []
        for index in range(self.num_layers):
            level = index % self.num_feature_levels
            if with_aux:
                class_logits, mask_logits = self._predict(queries, mask_features)
                predictions.append((class_logits, mask_logits))
                level_logits = _resize(mask_logits.detach(), sizes[level])
            else:
                decoded = self.decoder_norm(queries).transpose(0, 1)
                level_logits = self._mask_logits(decoded, level_mask_features[level])
            queries = self.transformer_cross_attention_layers[index](
                queries,
                memories[level],
                memory_mask=self._attention_mask(level_logits),
                pos=positions[level],
                query_pos=query_pos,
            )
            queries = self.transformer_self_attention_layers[index](queries, query_pos=query_pos)
            queries = self.transformer_ffn_layers[index](queries)

        class_logits, mask_logits = self._predict(queries, mask_features)
        outputs = {
            "pred_logits": class_logits,
            "pred_masks": mask_logits,
            "aux_outputs": [
                {"pred_logits": logits, "pred_masks": masks} for logits, masks in predictions
            ],
        }
        if self.query_embeddings_in_eval and not self.training:
            outputs["pred_embeddings"] = self.decoder_norm(queries).transpose(0, 1)
        return outputs

    def _group_frames(self, tensor: torch.Tensor) -> torch.Tensor:
        """The per-image tensor (N, ...) as the decoder's batch; the identity for images.

        A video decoder overrides it to group the frames of each video: (N * T, ...) ->
        (N, T, ...).
        """
        return tensor

    @staticmethod
    def _sequence(maps: torch.Tensor) -> torch.Tensor:
        """(N, C, H_l, W_l) maps -> (H_l * W_l, N, C) tokens; (N, T, C, H_l, W_l) clips ->
        (T * H_l * W_l, N, C), frame outermost."""
        return maps.movedim(-3, -1).flatten(1, -2).transpose(0, 1)

    def _predict(
        self, queries: torch.Tensor, mask_features: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(Q, N, C) queries -> class logits (N, Q, K + 1) and mask logits (N, Q, H, W)."""
        decoded = self.decoder_norm(queries).transpose(0, 1)
        return self.class_embed(decoded), self._mask_logits(decoded, mask_features)

    def _mask_logits(self, decoded: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        """(N, Q, C) normalized queries -> mask logits (N, Q, h, w) on (N, mask_dim, h, w)."""
        return torch.einsum("nqc,nchw->nqhw", self.mask_embed(decoded), mask_features)

    def _attention_mask(self, level_logits: torch.Tensor) -> torch.Tensor:
        """Where each query may not look at the next level.

        Args:
            level_logits: (N, Q, H_l, W_l) previous mask prediction at the size of the level
                attended to next; (N, Q, T, H_l, W_l) for a video decoder.

        Returns:
            (N * M, Q, H_l * W_l) bool (video: (N * M, Q, T * H_l * W_l), frame outermost
            like the memory), True = hidden; never True on a whole row.
        """
        hidden = level_logits.detach().sigmoid().flatten(2) < self.mask_threshold
        # A query with an empty mask attends everywhere (an all-hidden row would give NaN).
        hidden &= ~hidden.all(-1, keepdim=True)
        return hidden.repeat_interleave(self.num_heads, dim=0)


def _resize(maps: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (align_corners False) of the last two dims: (N, ..., h, w) ->
    (N, ..., *size); each (h, w) map on its own (the frames of a video too)."""
    resized = F.interpolate(maps.flatten(1, -3), size=size, mode="bilinear", align_corners=False)
    return resized.unflatten(1, maps.shape[1:-2])
