"""Swin Transformer backbone (Liu et al., "Swin Transformer: Hierarchical Vision Transformer
using Shifted Windows", ICCV 2021) as a detectron2 backbone.

Parameter names and shapes follow the official Swin / Mask2Former checkpoints, so their
converted ``.pkl`` files load without missing or unexpected keys.

Shape legend: B batch, H/W feature height/width (in patches), C channels, M window side,
N = M * M tokens per window, G number of windows per image, h attention heads, d = C / h head
width.

Windows are cut by gathering tokens with indices (`window_layout`, computed once per stage)
that pad to whole windows, shift and partition in one step, and put back the same way. That
is one copy where padding, rolling, partitioning and cropping made several, and it keeps the
model exportable by ``torch.export`` with a dynamic image size: no tensor has a dimension of
size G or H / M alone, whose being 1 or not (small or large images) would become a guard of
the exported program, and each size is one short expression of the input size, which keeps
the symbolic shape reasoning of the export short (export times in BENCHMARKS.md).
"""

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

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
    "WindowLayout",
    "window_layout",
]

_INIT_STD = 0.02


def _round_up(size: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` >= ``size`` (>= 1), written as a strided conv's
    output size is: under torch.export the symbolic sizes of successive stages then fold into
    one ``(H - 1) // stride + 1`` each, about which the symbolic shape reasoning can decide
    (nested ``(size + multiple - 1) // multiple`` left facts such as "B maps hold more tokens
    than one" open, as guards of the exported program that batch 1 then failed)."""
    return ((size - 1) // multiple + 1) * multiple


class WindowLayout(NamedTuple):
    """How the tokens of a batch of (H, W) maps are cut into (shifted) windows and put back.

    Attributes:
        partition: (B * G * N,) int64, for each window token, its row in the (B * (H * W + 1),
            C) tokens of the batch: each image's H * W tokens in raster order followed by one
            zero token, which stands for the padding to whole windows. Windows are in
            row-major order per image, tokens in row-major order per window.
        reverse: (B * H * W,) int64, for each map position in raster order, its row in the
            (B * G * N, C) window tokens.
        mask: (B * G, N, N) bool, True where attention is forbidden: token pairs of a shifted
            window that come from different regions of the map. None without shift.
        num_windows: G.
    """

    partition: Tensor
    reverse: Tensor
    mask: Optional[Tensor]
    num_windows: int


def _shift_regions(grid: Tensor, length: int, window_size: int, shift_size: int) -> Tensor:
    """Region of each coordinate of the shifted, padded map along one axis: 0 untouched, 1 the
    last window minus the rolled-in strip, 2 the strip rolled in from the opposite border."""
    return (grid >= length - window_size).long() + (grid >= length - shift_size).long()


def _wrap(index: Tensor, length: int) -> Tensor:
    """``index % length`` for 0 <= index < 2 * length, with a comparison: the ONNX exporter
    cannot translate a modulo by a size that is symbolic."""
    return index - (index >= length).long() * length


def window_layout(
    batch: int, height: int, width: int, window_size: int, shift_size: int, device: torch.device
) -> WindowLayout:
    """Indices that cut (B, H, W) maps into M x M windows, as Swin does: zero-pad the bottom
    and right to multiples of M, roll the map by -`shift_size` along both axes, cut windows;
    and that put the windows back (roll back, crop).

    Args:
        batch, height, width: B, H, W.
        window_size: M.
        shift_size: cyclic shift, 0 <= shift_size < M.
        device: device of the returned tensors.
    """
    m = window_size
    padded_height, padded_width = _round_up(height, m), _round_up(width, m)
    columns = padded_width // m
    num_windows = padded_height // m * columns
    pixels = height * width
    image = torch.arange(batch, device=device)[:, None]

    # each window token's place in the shifted, padded map, and where that place comes from
    token = torch.arange(num_windows * m * m, device=device)
    window, inside = token // (m * m), token % (m * m)
    window_row = window // columns
    grid_row = window_row * m + inside // m
    grid_col = (window - window_row * columns) * m + inside % m
    row = _wrap(grid_row + shift_size, padded_height)
    col = _wrap(grid_col + shift_size, padded_width)
    source = torch.where((row < height) & (col < width), row * width + col, pixels)
    partition = (image * (pixels + 1) + source).flatten()

    # each map position's place in the shifted map, and the window token holding it
    position = torch.arange(pixels, device=device)
    row = position // width
    col = _wrap(position - row * width + padded_width - shift_size, padded_width)
    row = _wrap(row + padded_height - shift_size, padded_height)
    target = (row // m * columns + col // m) * (m * m) + row % m * m + col % m
    reverse = (image * (num_windows * m * m) + target).flatten()

    mask = None
    if shift_size:
        regions = _shift_regions(grid_row, padded_height, m, shift_size) * 3
        regions = regions + _shift_regions(grid_col, padded_width, m, shift_size)
        regions = regions.repeat(batch).view(batch * num_windows, m * m)
        mask = regions[:, :, None] != regions[:, None, :]
    return WindowLayout(partition, reverse, mask, num_windows)


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
            x: (B * G, N, C) window tokens.
            mask: (B * G, N, N) bool, True where attention is forbidden, or None.

        Returns:
            (B * G, N, C).
        """
        num_windows_total, tokens, channels = x.shape
        head_dim = channels // self.num_heads
        qkv = self.qkv(x).view(num_windows_total, tokens, 3, self.num_heads, head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B * G, h, N, d)

        index = self.relative_position_index.view(-1)
        bias = self.relative_position_bias_table[index].view(tokens, tokens, -1)
        bias = bias.permute(2, 0, 1).to(query.dtype)  # (h, N, N)
        if mask is None:
            bias = bias.unsqueeze(0)  # broadcast over windows
        else:
            # forbidden pairs get -inf (the official code adds -100, which float32 softmax
            # also turns into a weight below 1e-43)
            bias = bias.masked_fill(mask[:, None], float("-inf"))  # (B * G, h, N, N)

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

    def forward(self, x: Tensor, layout: WindowLayout) -> Tensor:
        """
        Args:
            x: (B, H, W, C) feature map.
            layout: `window_layout` of the map for this block's window and shift sizes.

        Returns:
            (B, H, W, C).
        """
        batch, height, width, channels = x.shape
        tokens = self.norm1(x).view(batch, height * width, channels)
        tokens = F.pad(tokens, (0, 0, 0, 1))  # one zero token per image: the padding
        windows = tokens.flatten(0, 1).index_select(0, layout.partition)
        windows = windows.view(batch * layout.num_windows, self.window_size**2, channels)
        windows = self.attn(windows, layout.mask)
        y = windows.flatten(0, 1).index_select(0, layout.reverse)
        x = x + self.drop_path(y.view(batch, height, width, channels))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Halve the resolution: concatenate each 2x2 neighbourhood, LayerNorm, project 4C -> 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, ceil(H / 2), ceil(W / 2), 2C); odd sizes are zero-padded."""
        batch, height, width, channels = x.shape
        padded_height, padded_width = _round_up(height, 2), _round_up(width, 2)
        x = F.pad(x, (0, 0, 0, padded_width - width, 0, padded_height - height))
        x = x.view(batch, padded_height // 2, 2, padded_width // 2, 2, channels)
        # neighbourhood order (top-left, bottom-left, top-right, bottom-right), i.e. column
        # offset then row offset, is the one of the official checkpoints' `reduction` weights
        x = x.permute(0, 1, 3, 4, 2, 5)
        x = x.reshape(batch, padded_height // 2, padded_width // 2, 4 * channels)
        return self.reduction(self.norm(x))


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

    def forward(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """
        Args:
            x: (B, H, W, C).

        Returns:
            The stage output (B, H, W, C) and the downsampled map (B, ceil(H / 2),
            ceil(W / 2), 2C), or None for the last stage.
        """
        batch, height, width, _ = x.shape
        layouts = {
            shift: window_layout(batch, height, width, self.window_size, shift, x.device)
            for shift in {block.shift_size for block in self.blocks}
        }
        for block in self.blocks:
            layout = layouts[block.shift_size]
            if self.use_checkpoint and x.requires_grad:
                x = checkpoint(block, x, layout, use_reentrant=False)
            else:
                x = block(x, layout)
        down = self.downsample(x) if self.downsample is not None else None
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
        patch = self.patch_size
        x = F.pad(x, (0, _round_up(width, patch) - width, 0, _round_up(height, patch) - height))
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
        frozen_stages: int = -1,
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
            frozen_stages: MODEL.SWIN.FROZEN_STAGES, the Swin reference code's
                ``frozen_stages``: -1 trains everything, 0 freezes the patch embedding (and the
                absolute position embedding), k also the first k stages (each with its output
                norm and its patch merging). Frozen parts get no gradients and stay in eval
                mode (no drop path) while the model trains.
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
        if not (isinstance(frozen_stages, int) and -1 <= frozen_stages <= len(depths)):
            raise ValueError(
                f"MODEL.SWIN.FROZEN_STAGES is {frozen_stages!r}; it must be -1 (train "
                f"everything), 0 (freeze the patch embedding) or up to {len(depths)} (also the "
                "first stages)."
            )
        self.frozen_stages = frozen_stages
        for module in self.frozen_modules():
            for parameter in module.parameters():
                parameter.requires_grad_(False)
        if frozen_stages >= 0 and self.absolute_pos_embed is not None:
            self.absolute_pos_embed.requires_grad_(False)

    def frozen_modules(self) -> List[nn.Module]:
        """The submodules that ``frozen_stages`` freezes, in forward order."""
        if self.frozen_stages < 0:
            return []
        modules: List[nn.Module] = [self.patch_embed, self.pos_drop]
        for index in range(self.frozen_stages):
            modules.append(self.layers[index])
            norm = getattr(self, f"norm{index}", None)
            if norm is not None:
                modules.append(norm)
        return modules

    def train(self, mode: bool = True) -> "D2SwinTransformer":
        """``nn.Module.train``, keeping the frozen parts in eval mode."""
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

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
            "frozen_stages": swin.FROZEN_STAGES,
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
        x = self.pos_drop(x.permute(0, 2, 3, 1))  # (B, H, W, C)

        outputs = {}
        for index, (name, stage) in enumerate(zip(self._stage_names, self.layers)):
            stage_out, x = stage(x)
            if name in self._out_features:
                stage_out = getattr(self, f"norm{index}")(stage_out)
                outputs[name] = stage_out.permute(0, 3, 1, 2).contiguous()
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
