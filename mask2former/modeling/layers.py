"""Small layers shared by the pixel decoders and the transformer decoder.

Shape legend: N batch, L target (query) length, S source (memory) length, C channels.
Sequence tensors are sequence-first, (L, N, C), as ``nn.MultiheadAttention`` expects by default.
"""

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, get_norm
from fvcore.nn import weight_init
from torch import nn

__all__ = [
    "MLP",
    "CrossAttentionLayer",
    "FFNLayer",
    "SelfAttentionLayer",
    "get_activation_fn",
    "get_norm_layer",
    "with_pos_embed",
]

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}


def get_activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Returns the activation function called ``name`` ("relu", "gelu" or "glu")."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}.")
    return _ACTIVATIONS[name]


def get_norm_layer(norm: str, channels: int, num_groups: int = 32) -> Optional[nn.Module]:
    """Builds a normalization layer for conv features.

    Like :func:`detectron2.layers.get_norm`, except that the number of GroupNorm groups is
    an argument (detectron2 fixes it to 32) instead of a hidden constant.

    Args:
        norm: "GN" for GroupNorm, "" for none, or any name detectron2's ``get_norm`` knows
            ("BN", "SyncBN", "FrozenBN", "LN", ...).
        channels: number of channels normalized.
        num_groups: GroupNorm groups; must divide ``channels``. Ignored for other norms.

    Returns:
        The layer, or None when ``norm`` is "".
    """
    if norm == "GN":
        if channels % num_groups != 0:
            raise ValueError(
                f"GroupNorm with {num_groups} groups needs channels divisible by it, got "
                f"{channels}; change the conv dim or the GroupNorm groups in the config."
            )
        return nn.GroupNorm(num_groups, channels)
    return get_norm(norm, channels)


def fpn_lateral_conv(in_channels: int, conv_dim: int, norm: str, norm_num_groups: int) -> Conv2d:
    """The 1x1 lateral convolution (with norm, Caffe2 Xavier init) of an FPN level.

    Bias only without a norm, as in the official pixel decoders' ``adapter_*`` layers.
    """
    conv = Conv2d(
        in_channels,
        conv_dim,
        kernel_size=1,
        bias=norm == "",
        norm=get_norm_layer(norm, conv_dim, norm_num_groups),
    )
    weight_init.c2_xavier_fill(conv)
    return conv


def fpn_output_conv(in_channels: int, conv_dim: int, norm: str, norm_num_groups: int) -> Conv2d:
    """The 3x3 output convolution (with norm and ReLU) of an FPN level (``layer_*``)."""
    conv = Conv2d(
        in_channels,
        conv_dim,
        kernel_size=3,
        padding=1,
        bias=norm == "",
        norm=get_norm_layer(norm, conv_dim, norm_num_groups),
        activation=F.relu,
    )
    weight_init.c2_xavier_fill(conv)
    return conv


def with_pos_embed(tensor: torch.Tensor, pos: Optional[torch.Tensor]) -> torch.Tensor:
    """Adds a positional embedding when there is one."""
    return tensor if pos is None else tensor + pos


class MLP(nn.Module):
    """A stack of ``num_layers`` Linear layers with ReLU between them (none after the last).

    Parameters are ``layers.{i}.weight/bias``, the layout of the official checkpoints.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"An MLP needs at least one layer, got num_layers={num_layers}.")
        in_dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        out_dims = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(in_dims, out_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., input_dim) -> (..., output_dim)."""
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < last:
                x = F.relu(x)
        return x


def _xavier_init_matrices(module: nn.Module) -> None:
    for parameter in module.parameters():
        if parameter.dim() > 1:
            nn.init.xavier_uniform_(parameter)


class SelfAttentionLayer(nn.Module):
    """Multi-head self-attention with a residual connection and LayerNorm.

    Post-norm: ``norm(x + attn(x))``; pre-norm (``normalize_before``): ``x + attn(norm(x))``.
    The positional embedding is added to queries and keys, not to values.
    Parameters: ``self_attn`` (nn.MultiheadAttention), ``norm``.
    """

    def __init__(
        self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False
    ):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_init_matrices(self)

    def forward(
        self,
        tgt: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
        query_pos: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            tgt: (L, N, C) sequence.
            attn_mask: optional (L, L) or (N * heads, L, L); bool True = not allowed.
            key_padding_mask: optional (N, L) bool, True at padded positions.
            query_pos: optional (L, N, C) positional embedding.

        Returns:
            (L, N, C)
        """
        x = self.norm(tgt) if self.normalize_before else tgt
        query = key = with_pos_embed(x, query_pos)
        attended = self.self_attn(
            query,
            key,
            value=x,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            need_weights=False,
        )[0]
        tgt = tgt + self.dropout(attended)
        return tgt if self.normalize_before else self.norm(tgt)


class CrossAttentionLayer(nn.Module):
    """Multi-head cross-attention from queries to a memory, with residual and LayerNorm.

    Post-norm: ``norm(q + attn(q, mem))``; pre-norm: ``q + attn(norm(q), mem)``.
    Positional embeddings are added to queries and keys, not to values.
    Parameters: ``multihead_attn`` (nn.MultiheadAttention), ``norm``.
    """

    def __init__(
        self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False
    ):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_init_matrices(self)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: Optional[torch.Tensor] = None,
        memory_key_padding_mask: Optional[torch.Tensor] = None,
        pos: Optional[torch.Tensor] = None,
        query_pos: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            tgt: (L, N, C) queries.
            memory: (S, N, C) keys/values.
            memory_mask: optional (L, S) or (N * heads, L, S); bool True = not allowed. A row
                must not be all True (its softmax would be NaN).
            memory_key_padding_mask: optional (N, S) bool, True at padded positions.
            pos: optional (S, N, C) positional embedding of the memory.
            query_pos: optional (L, N, C) positional embedding of the queries.

        Returns:
            (L, N, C)
        """
        x = self.norm(tgt) if self.normalize_before else tgt
        attended = self.multihead_attn(
            query=with_pos_embed(x, query_pos),
            key=with_pos_embed(memory, pos),
            value=memory,
            attn_mask=memory_mask,
            key_padding_mask=memory_key_padding_mask,
            need_weights=False,
        )[0]
        tgt = tgt + self.dropout(attended)
        return tgt if self.normalize_before else self.norm(tgt)


class FFNLayer(nn.Module):
    """Two-layer feed-forward block with residual and LayerNorm (post- or pre-norm).

    Parameters: ``linear1`` (C -> dim_feedforward), ``linear2`` (back to C), ``norm``.
    """

    def __init__(
        self,
        d_model: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.0,
        activation: str = "relu",
        normalize_before: bool = False,
    ):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.activation = get_activation_fn(activation)
        self.normalize_before = normalize_before
        _xavier_init_matrices(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        """(L, N, C) -> (L, N, C)."""
        x = self.norm(tgt) if self.normalize_before else tgt
        x = self.linear2(self.dropout(self.activation(self.linear1(x))))
        tgt = tgt + self.dropout(x)
        return tgt if self.normalize_before else self.norm(tgt)
