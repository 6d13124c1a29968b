"""Swin Transformer backbone (Liu et al., "Swin Transformer: Hierarchical Vision Transformer
using Shifted Windows", ICCV 2021) as a detectron2 backbone.

Parameter names and shapes follow the official Swin / Mask2Former checkpoints, so their
converted ``.pkl`` files load without missing or unexpected keys.

Shape legend: B batch, H/W feature height/width (in patches), C channels, M window side,
N = M * M tokens per window, G number of windows, h attention heads, d = C / h head width.
"""

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "D2SwinTransformer",
    "DropPath",
    "shifted_window_attention_mask",
    "window_partition",
    "window_reverse",
]

_INIT_STD = 0.02


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """Cut a feature map into non-overlapping square windows.

    Args:
        x: (B, H, W, C), H and W multiples of `window_size`.
        window_size: M.

    Returns:
        (B * G, N, C) tokens of each window, windows in row-major order per image.
    """
    batch, height, width, channels = x.shape
    m = window_size
    rows, columns = height // m, width // m
    x = x.view(batch, rows, m, columns, m, channels).transpose(2, 3)
    return x.reshape(batch * rows * columns, m * m, channels)


def window_reverse(
    windows: Tensor, window_size: int, height: int, width: int, batch: int = -1
) -> Tensor:
    """Inverse of `window_partition`: (B * G, N, C) -> (B, H, W, C); ``batch`` B, when given,
    spares torch.export from deriving it (by division) when sizes are symbolic."""
    m = window_size
    channels = windows.shape[-1]
    x = windows.view(batch, height // m, width // m, m, m, channels).transpose(2, 3)
    return x.reshape(batch, height, width, channels)


def _round_up(size: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` >= ``size``, in integer arithmetic: a size that is
    symbolic under torch.export stays a simple expression (no float ceil, no modulo)."""
    return (size + multiple - 1) // multiple * multiple


def shifted_window_attention_mask(
    height: int, width: int, window_size: int, shift_size: int, device: torch.device
) -> Tensor:
    """Which token pairs of a cyclically shifted window come from different image regions.

    After rolling the (padded) map by -`shift_size`, the last row and column of windows mix
    tokens from opposite image borders; those must not attend to each other.

    Args:
        height, width: padded map size, multiples of `window_size`.
        window_size: M.
        shift_size: cyclic shift, 0 < shift_size < M.
        device: device of the returned mask.

    Returns:
        (G, N, N) bool, True where attention is forbidden; G = (height / M) * (width / M).
    """

    def region_ids(length: int) -> Tensor:
        # 0: untouched, 1: last window minus the rolled-in strip, 2: the rolled-in strip
        ids = torch.zeros(length, dtype=torch.int64, device=device)
        ids[length - window_size : length - shift_size] = 1
        ids[length - shift_size :] = 2
        return ids

    regions = region_ids(height)[:, None] * 3 + region_ids(width)[None, :]
    windows = window_partition(regions[None, :, :, None], window_size).squeeze(-1)
    return windows[:, :, None] != windows[:, None, :]


def drop_path(x: Tensor, drop_prob: float, training: bool) -> Tensor:
    """Stochastic depth: zero whole samples of a residual branch, rescale the kept ones."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep_prob)
    return x * keep / keep_prob


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016) per sample, for residual branches."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """Two-layer GELU MLP of a Swin block (parameters ``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def _relative_position_index(window_size: int) -> Tensor:
    """(N, N) index into the ((2M-1)^2, h) bias table for each (query, key) token pair."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]) + (window_size - 1)
    return relative[0] * (2 * window_size - 1) + relative[1]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias."""

    def __init__(
        self,
        dim: int,
        window_size: int,
        num_heads: int,
        qkv_bias: bool,
        qk_scale: Optional[float],
        attn_drop: float,
        proj_drop: float,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        self.register_buffer("relative_position_index", _relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=_INIT_STD)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            x: (B * G, N, C) window tokens, windows of one image consecutive.
            mask: (G, N, N) bool, True where attention is forbidden, or None.

        Returns:
            (B * G, N, C).
        """
        num_windows_total, tokens, channels = x.shape
        qkv = self.qkv(x).view(num_windows_total, tokens, 3, self.num_heads, -1)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B * G, h, N, d)

        index = self.relative_position_index.view(-1)
        bias = self.relative_position_bias_table[index].view(tokens, tokens, -1)
        bias = bias.permute(2, 0, 1).to(query.dtype)  # (h, N, N)
        if mask is None:
            bias = bias.unsqueeze(0)  # broadcast over windows
        else:
            # forbidden pairs get -inf (the official code adds -100, which float32 softmax
            # also turns into a weight below 1e-43)
            num_windows = mask.shape[0]
            bias = bias.masked_fill(mask[:, None], float("-inf"))  # (G, h, N, N)
            bias = bias.expand(num_windows_total // num_windows, -1, -1, -1, -1)
            bias = bias.reshape(num_windows_total, self.num_heads, tokens, tokens)

        out = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=bias,
            dropout_p=self.attn_drop if self.training else 0.0,
            scale=self.scale,
        )
        out = out.transpose(1, 2).reshape(num_windows_total, tokens, channels)
        return self.proj_drop(self.proj(out))


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention then MLP, each a pre-norm residual branch."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: Optional[float],
        drop: float,
        attn_drop: float,
        drop_path: float,
    ):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, {window_size}), got {shift_size}")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop=attn_drop, proj_drop=drop
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout=drop)

    def forward(self, x: Tensor, height: int, width: int, shift_mask: Optional[Tensor]) -> Tensor:
        """
        Args:
            x: (B, H * W, C) tokens in row-major order.
            height, width: H, W.
            shift_mask: mask from `shifted_window_attention_mask` for the padded map; used only
                when this block shifts its windows.

        Returns:
            (B, H * W, C).
        """
        batch, _, channels = x.shape
        m, shift = self.window_size, self.shift_size
        padded_height, padded_width = _round_up(height, m), _round_up(width, m)

        y = self.norm1(x).view(batch, height, width, channels)
        y = F.pad(y, (0, 0, 0, padded_width - width, 0, padded_height - height))
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        windows = self.attn(window_partition(y, m), mask=shift_mask if shift else None)
        y = window_reverse(windows, m, padded_height, padded_width, batch)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        y = y[:, :height, :width].reshape(batch, height * width, channels)

        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Halve the resolution: concatenate each 2x2 neighbourhood, LayerNorm, project 4C -> 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        """(B, H * W, C) -> (B, ceil(H / 2) * ceil(W / 2), 2C); odd sizes are zero-padded."""
        batch, _, channels = x.shape
        x = x.view(batch, height, width, channels)
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        # neighbourhood order (top-left, bottom-left, top-right, bottom-right) is the one of the
        # official checkpoints' `reduction` weights
        x = torch.cat(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1
        )
        return self.reduction(self.norm(x.view(batch, -1, 4 * channels)))


class SwinStage(nn.Module):
    """Swin blocks alternating regular and shifted windows, then an optional PatchMerging.

    Submodule names (``blocks``, ``downsample``) are those of the official checkpoints.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: Optional[float],
        drop: float,
        attn_drop: float,
        drop_paths: Sequence[float],
        downsample: bool,
        use_checkpoint: bool,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim,
                num_heads,
                window_size,
                shift_size=0 if index % 2 == 0 else self.shift_size,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop=drop,
                attn_drop=attn_drop,
                drop_path=drop_paths[index],
            )
            for index in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor, height: int, width: int) -> Tuple[Tensor, Optional[Tensor]]:
        """
        Args:
            x: (B, H * W, C).

        Returns:
            The stage output (B, H * W, C) and the downsampled tokens
            (B, ceil(H / 2) * ceil(W / 2), 2C), or None for the last stage.
        """
        m = self.window_size
        shift_mask = None
        if self.shift_size and len(self.blocks) > 1:
            shift_mask = shifted_window_attention_mask(
                _round_up(height, m), _round_up(width, m), m, self.shift_size, x.device
            )
        for block in self.blocks:
            if self.use_checkpoint and x.requires_grad:
                x = checkpoint(block, x, height, width, shift_mask, use_reentrant=False)
            else:
                x = block(x, height, width, shift_mask)
        down = self.downsample(x, height, width) if self.downsample is not None else None
        return x, down


class PatchEmbed(nn.Module):
    """Embed non-overlapping patches with a strided conv (``proj``), optionally LayerNorm."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, norm: bool):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C, ceil(H / patch), ceil(W / patch)); input zero-padded."""
        height, width = x.shape[-2:]
        x = F.pad(x, (0, (-width) % self.patch_size, 0, (-height) % self.patch_size))
        x = self.proj(x)
        if self.norm is not None:
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x


@BACKBONE_REGISTRY.register()
class D2SwinTransformer(Backbone):
    """Swin Transformer returning the outputs of its four stages as res2..res5.

    Outputs "res{i+2}" have stride 4 * 2**i and EMBED_DIM * 2**i channels. Inputs of any size
    work (they are padded internally to the patch and window sizes); `size_divisibility` is 32
    so that batched images keep the strides exact. Swin-T/S/B/L are EMBED_DIM 96/96/128/192,
    DEPTHS [2,2,6,2]/[2,2,18,2]/[2,2,18,2]/[2,2,18,2], NUM_HEADS [3,6,12,24]/[3,6,12,24]/
    [4,8,16,32]/[6,12,24,48]; 384-pixel pre-training uses WINDOW_SIZE 12 instead of 7.
    """

    @configurable
    def __init__(
        self,
        *,
        pretrain_img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.3,
        ape: bool = False,
        patch_norm: bool = True,
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        use_checkpoint: bool = False,
    ):
        """
        Args:
            pretrain_img_size: pre-training image size; sizes the absolute position embedding.
            patch_size: side of the embedded patches.
            in_chans: input channels.
            embed_dim: channels of the first stage; doubled by each later stage.
            depths: blocks per stage.
            num_heads: attention heads per stage.
            window_size: side M of the attention windows.
            mlp_ratio: MLP hidden width relative to the stage's channels.
            qkv_bias: learn a bias in the qkv projection.
            qk_scale: attention logit scale; None means head_dim ** -0.5.
            drop_rate: dropout after the patch embedding, in MLPs and attention projections.
            attn_drop_rate: dropout on attention weights.
            drop_path_rate: stochastic depth of the last block (linear from 0 over all blocks).
            ape: add a learned absolute position embedding.
            patch_norm: LayerNorm after the patch embedding.
            out_features: stage outputs to return, among "res2".."res5".
            use_checkpoint: gradient checkpointing of each block.
        """
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(
                f"MODEL.SWIN.DEPTHS {list(depths)} and MODEL.SWIN.NUM_HEADS {list(num_heads)} "
                "must have one entry per stage"
            )
        names = [f"res{index + 2}" for index in range(len(depths))]
        unknown = [name for name in out_features if name not in names]
        if unknown:
            raise ValueError(f"MODEL.SWIN.OUT_FEATURES {unknown} not among the stages {names}")
        self._out_features = list(out_features)
        self.num_features = [embed_dim * 2**index for index in range(len(depths))]
        self._out_feature_channels = dict(zip(names, self.num_features))
        self._out_feature_strides = {name: patch_size * 2**i for i, name in enumerate(names)}
        self._stage_names = names

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, norm=patch_norm)
        if ape:
            grid = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=_INIT_STD)
        else:
            self.absolute_pos_embed = None
        self.pos_drop = nn.Dropout(drop_rate)

        num_blocks = sum(depths)
        drop_paths = [drop_path_rate * i / max(num_blocks - 1, 1) for i in range(num_blocks)]
        self.layers = nn.ModuleList()
        for index, (depth, heads) in enumerate(zip(depths, num_heads)):
            first = sum(depths[:index])
            self.layers.append(
                SwinStage(
                    self.num_features[index],
                    depth,
                    heads,
                    window_size,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_paths=drop_paths[first : first + depth],
                    downsample=index < len(depths) - 1,
                    use_checkpoint=use_checkpoint,
                )
            )
        # one output LayerNorm per returned stage, named norm{stage index} as in the checkpoints
        for index, name in enumerate(names):
            if name in self._out_features:
                self.add_module(f"norm{index}", nn.LayerNorm(self.num_features[index]))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=_INIT_STD)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec) -> Dict:
        swin = cfg.MODEL.SWIN
        return {
            "pretrain_img_size": swin.PRETRAIN_IMG_SIZE,
            "patch_size": swin.PATCH_SIZE,
            "in_chans": input_shape.channels,
            "embed_dim": swin.EMBED_DIM,
            "depths": swin.DEPTHS,
            "num_heads": swin.NUM_HEADS,
            "window_size": swin.WINDOW_SIZE,
            "mlp_ratio": swin.MLP_RATIO,
            "qkv_bias": swin.QKV_BIAS,
            "qk_scale": swin.QK_SCALE,
            "drop_rate": swin.DROP_RATE,
            "attn_drop_rate": swin.ATTN_DROP_RATE,
            "drop_path_rate": swin.DROP_PATH_RATE,
            "ape": swin.APE,
            "patch_norm": swin.PATCH_NORM,
            "out_features": swin.OUT_FEATURES,
            "use_checkpoint": swin.USE_CHECKPOINT,
        }

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """
        Args:
            x: (B, C_in, H, W) images.

        Returns:
            {"res{i+2}": (B, EMBED_DIM * 2**i, ceil(H / (4 * 2**i)), ceil(W / (4 * 2**i)))} for
            the names in OUT_FEATURES.
        """
        if x.dim() != 4:
            raise ValueError(f"D2SwinTransformer takes (B, C, H, W) images, got {tuple(x.shape)}")
        x = self.patch_embed(x)
        height, width = x.shape[-2:]
        if self.absolute_pos_embed is not None:
            x = x + F.interpolate(self.absolute_pos_embed, size=(height, width), mode="bicubic")
        x = self.pos_drop(x.flatten(2).transpose(1, 2))

        outputs = {}
        for index, (name, stage) in enumerate(zip(self._stage_names, self.layers)):
            stage_out, x = stage(x, height, width)
            if name in self._out_features:
                stage_out = getattr(self, f"norm{index}")(stage_out)
                outputs[name] = stage_out.view(-1, height, width, self.num_features[index])
                outputs[name] = outputs[name].permute(0, 3, 1, 2).contiguous()
            height, width = (height + 1) // 2, (width + 1) // 2
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }

    @property
    def size_divisibility(self) -> int:
        return 32
