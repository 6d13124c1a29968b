"""Parameter names of Hugging Face transformers' Mask2Former and ours, in both directions.

transformers keeps, on disk, the names its Mask2Former had when the Hub checkpoints were
converted (``save_pretrained`` maps its current module names back to them), so those are the
names read and written here: e.g. ``...attention.self.query.weight`` for Swin's query
projection, not the in-memory ``...attention.q_proj.weight`` of recent versions.

One table, :data:`RULES`, lists every correspondence; both directions are derived from it. A
name on either side that no rule covers is an error that lists the names, so a checkpoint with
another backbone or a changed layout stops the conversion instead of loading partially.

Where the two layouts differ:

- Swin window attention: Hugging Face has separate ``query``/``key``/``value`` projections,
  we have one fused ``qkv`` Linear (the official Swin layout). Our forward views the fused
  output as (3, heads, head_dim), so rows [0, C) of ``qkv.weight`` are the query projection,
  [C, 2C) the key and [2C, 3C) the value; each keeps its own head-major row order, which is
  the order Hugging Face's ``view(..., heads, head_dim)`` reads too. Fusing is concatenation
  along dim 0 (weights and biases alike), splitting is ``chunk(3)``.
- Transformer-decoder self-attention: Hugging Face uses its own attention module with
  ``q_proj``/``k_proj``/``v_proj``, we use ``nn.MultiheadAttention`` whose ``in_proj_weight``
  stacks the query, key and value projections in that order: the same concatenation.
  Both scale the query by head_dim ** -0.5 after its bias, so no weight is rescaled.
  The masked cross-attention is ``nn.MultiheadAttention`` on both sides: copied as is.
- Convolutions followed by a norm are ``nn.Sequential(conv, norm)`` in Hugging Face
  (``adapter_1.0`` / ``adapter_1.1``) and detectron2 ``Conv2d`` with a ``norm`` attribute
  here (``adapter_1`` / ``adapter_1.norm``); the pixel decoder's input projections are
  ``Sequential(conv, GroupNorm)`` on both sides.
- Level order: both pixel decoders order the deformable encoder's input projections and level
  embeddings from the lowest resolution (stride 32) to the highest, and both number the FPN
  levels ``adapter_1``/``layer_1`` from the highest resolution (stride 4), so indices map to
  themselves.
- Swin stage outputs: Hugging Face names the output LayerNorms by stage
  (``hidden_states_norms.stage1`` .. ``stage4``), we number them from 0 (``norm0`` ..
  ``norm3``), the official names.
- Derived values: Swin's ``relative_position_index`` depends only on the window size; ours is
  a persistent buffer (official checkpoints carry it), recent transformers keep it out of the
  file. It is recomputed here when reading and left out when writing. ``swin.layernorm`` is the
  final norm of Hugging Face's ``SwinModel``, which its ``SwinBackbone`` never applies (and
  transformers ignores when missing): it is dropped when reading and written as an identity
  LayerNorm (weight 1, bias 0, what transformers initialises it to) so the written folder has
  every key transformers expects.
"""

import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..modeling.backbone.swin import _relative_position_index

__all__ = ["UnmappedKeysError", "RULES", "hf_to_d2_state_dict", "d2_to_hf_state_dict"]

_HF_SWIN = "model.pixel_level_module.encoder."
_HF_PIXEL_DECODER = "model.pixel_level_module.decoder."
_HF_TRANSFORMER = "model.transformer_module."
_SWIN_BLOCK_HF = _HF_SWIN + "encoder.layers.{i}.blocks.{j}."
_SWIN_BLOCK = "backbone.layers.{i}.blocks.{j}."
_PIXEL_DECODER = "sem_seg_head.pixel_decoder."
_ENCODER_LAYER_HF = _HF_PIXEL_DECODER + "encoder.layers.{i}."
_ENCODER_LAYER = _PIXEL_DECODER + "transformer.encoder.layers.{i}."
_DECODER_LAYER_HF = _HF_TRANSFORMER + "decoder.layers.{i}."
_PREDICTOR = "sem_seg_head.predictor."

# What each placeholder of a name template matches.
_PLACEHOLDERS = {
    "i": r"\d+",
    "j": r"\d+",
    "stage": r"\d+",
    "p": r"weight|bias",
    "proj": r"sampling_offsets|attention_weights|value_proj|output_proj",
}


class UnmappedKeysError(ValueError):
    """A checkpoint has parameter names that no rule maps (another model or layout)."""


def _compile(template: str) -> "re.Pattern[str]":
    pattern = re.escape(template)
    for name, regex in _PLACEHOLDERS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{regex})")
    return re.compile(pattern)


def _fill(template: str, groups: Mapping[str, str]) -> str:
    return template.format(**groups)


@dataclass(frozen=True)
class Rule:
    """One Hugging Face name (or three, fused on our side) and our name.

    Attributes:
        hf: name templates on the Hugging Face side; three when our tensor is their
            concatenation along dim 0 (query, key, value), else one.
        ours: our name template.
        stage_offset: Hugging Face's ``{stage}`` minus ours (stage1 is our norm0).
    """

    hf: Tuple[str, ...]
    ours: str
    stage_offset: int = 0

    def hf_patterns(self) -> List["re.Pattern[str]"]:
        return [_compile(template) for template in self.hf]

    def ours_pattern(self) -> "re.Pattern[str]":
        return _compile(self.ours)

    def to_ours(self, groups: Dict[str, str]) -> Dict[str, str]:
        if "stage" in groups:
            groups = {**groups, "stage": str(int(groups["stage"]) - self.stage_offset)}
        return groups

    def to_hf(self, groups: Dict[str, str]) -> Dict[str, str]:
        if "stage" in groups:
            groups = {**groups, "stage": str(int(groups["stage"]) + self.stage_offset)}
        return groups


def _rename(hf: str, ours: str, stage_offset: int = 0) -> Rule:
    return Rule((hf,), ours, stage_offset)


def _fused(hf_query: str, hf_key: str, hf_value: str, ours: str) -> Rule:
    return Rule((hf_query, hf_key, hf_value), ours)


RULES: Tuple[Rule, ...] = (
    # Swin backbone
    _rename(
        _HF_SWIN + "embeddings.patch_embeddings.projection.{p}", "backbone.patch_embed.proj.{p}"
    ),
    _rename(_HF_SWIN + "embeddings.norm.{p}", "backbone.patch_embed.norm.{p}"),
    _rename(_SWIN_BLOCK_HF + "layernorm_before.{p}", _SWIN_BLOCK + "norm1.{p}"),
    _rename(
        _SWIN_BLOCK_HF + "attention.self.relative_position_bias_table",
        _SWIN_BLOCK + "attn.relative_position_bias_table",
    ),
    _fused(
        _SWIN_BLOCK_HF + "attention.self.query.{p}",
        _SWIN_BLOCK_HF + "attention.self.key.{p}",
        _SWIN_BLOCK_HF + "attention.self.value.{p}",
        _SWIN_BLOCK + "attn.qkv.{p}",
    ),
    _rename(_SWIN_BLOCK_HF + "attention.output.dense.{p}", _SWIN_BLOCK + "attn.proj.{p}"),
    _rename(_SWIN_BLOCK_HF + "layernorm_after.{p}", _SWIN_BLOCK + "norm2.{p}"),
    _rename(_SWIN_BLOCK_HF + "intermediate.dense.{p}", _SWIN_BLOCK + "mlp.fc1.{p}"),
    _rename(_SWIN_BLOCK_HF + "output.dense.{p}", _SWIN_BLOCK + "mlp.fc2.{p}"),
    _rename(
        _HF_SWIN + "encoder.layers.{i}.downsample.reduction.weight",
        "backbone.layers.{i}.downsample.reduction.weight",
    ),
    _rename(
        _HF_SWIN + "encoder.layers.{i}.downsample.norm.{p}",
        "backbone.layers.{i}.downsample.norm.{p}",
    ),
    _rename(
        _HF_SWIN + "hidden_states_norms.stage{stage}.{p}",
        "backbone.norm{stage}.{p}",
        stage_offset=1,
    ),
    # Pixel decoder: deformable-attention encoder, then the FPN levels and the mask features
    _rename(
        _HF_PIXEL_DECODER + "input_projections.{i}.0.{p}", _PIXEL_DECODER + "input_proj.{i}.0.{p}"
    ),
    _rename(
        _HF_PIXEL_DECODER + "input_projections.{i}.1.{p}", _PIXEL_DECODER + "input_proj.{i}.1.{p}"
    ),
    _rename(_HF_PIXEL_DECODER + "level_embed", _PIXEL_DECODER + "transformer.level_embed"),
    _rename(_ENCODER_LAYER_HF + "self_attn.{proj}.{p}", _ENCODER_LAYER + "self_attn.{proj}.{p}"),
    _rename(_ENCODER_LAYER_HF + "self_attn_layer_norm.{p}", _ENCODER_LAYER + "norm1.{p}"),
    _rename(_ENCODER_LAYER_HF + "fc1.{p}", _ENCODER_LAYER + "linear1.{p}"),
    _rename(_ENCODER_LAYER_HF + "fc2.{p}", _ENCODER_LAYER + "linear2.{p}"),
    _rename(_ENCODER_LAYER_HF + "final_layer_norm.{p}", _ENCODER_LAYER + "norm2.{p}"),
    _rename(_HF_PIXEL_DECODER + "adapter_{i}.0.weight", _PIXEL_DECODER + "adapter_{i}.weight"),
    _rename(_HF_PIXEL_DECODER + "adapter_{i}.1.{p}", _PIXEL_DECODER + "adapter_{i}.norm.{p}"),
    _rename(_HF_PIXEL_DECODER + "layer_{i}.0.weight", _PIXEL_DECODER + "layer_{i}.weight"),
    _rename(_HF_PIXEL_DECODER + "layer_{i}.1.{p}", _PIXEL_DECODER + "layer_{i}.norm.{p}"),
    _rename(_HF_PIXEL_DECODER + "mask_projection.{p}", _PIXEL_DECODER + "mask_features.{p}"),
    # Transformer decoder: queries, levels, layers and the prediction heads
    _rename(_HF_TRANSFORMER + "queries_features.weight", _PREDICTOR + "query_feat.weight"),
    _rename(_HF_TRANSFORMER + "queries_embedder.weight", _PREDICTOR + "query_embed.weight"),
    _rename(_HF_TRANSFORMER + "level_embed.weight", _PREDICTOR + "level_embed.weight"),
    _rename(_HF_TRANSFORMER + "decoder.layernorm.{p}", _PREDICTOR + "decoder_norm.{p}"),
    _rename(
        _HF_TRANSFORMER + "decoder.mask_predictor.mask_embedder.{i}.0.{p}",
        _PREDICTOR + "mask_embed.layers.{i}.{p}",
    ),
    _rename(
        _DECODER_LAYER_HF + "cross_attn.in_proj_{p}",
        _PREDICTOR + "transformer_cross_attention_layers.{i}.multihead_attn.in_proj_{p}",
    ),
    _rename(
        _DECODER_LAYER_HF + "cross_attn.out_proj.{p}",
        _PREDICTOR + "transformer_cross_attention_layers.{i}.multihead_attn.out_proj.{p}",
    ),
    _rename(
        _DECODER_LAYER_HF + "cross_attn_layer_norm.{p}",
        _PREDICTOR + "transformer_cross_attention_layers.{i}.norm.{p}",
    ),
    _fused(
        _DECODER_LAYER_HF + "self_attn.q_proj.{p}",
        _DECODER_LAYER_HF + "self_attn.k_proj.{p}",
        _DECODER_LAYER_HF + "self_attn.v_proj.{p}",
        _PREDICTOR + "transformer_self_attention_layers.{i}.self_attn.in_proj_{p}",
    ),
    _rename(
        _DECODER_LAYER_HF + "self_attn.out_proj.{p}",
        _PREDICTOR + "transformer_self_attention_layers.{i}.self_attn.out_proj.{p}",
    ),
    _rename(
        _DECODER_LAYER_HF + "self_attn_layer_norm.{p}",
        _PREDICTOR + "transformer_self_attention_layers.{i}.norm.{p}",
    ),
    _rename(_DECODER_LAYER_HF + "fc1.{p}", _PREDICTOR + "transformer_ffn_layers.{i}.linear1.{p}"),
    _rename(_DECODER_LAYER_HF + "fc2.{p}", _PREDICTOR + "transformer_ffn_layers.{i}.linear2.{p}"),
    _rename(
        _DECODER_LAYER_HF + "final_layer_norm.{p}",
        _PREDICTOR + "transformer_ffn_layers.{i}.norm.{p}",
    ),
    _rename("class_predictor.{p}", _PREDICTOR + "class_embed.{p}"),
    # The "no object" class weight of the classification loss (from NO_OBJECT_WEIGHT).
    _rename("criterion.empty_weight", "criterion.empty_weight"),
)

# The final norm of transformers' SwinModel, which its SwinBackbone never applies.
_HF_FINAL_NORM = _HF_SWIN + "swin.layernorm.{p}"
# Hugging Face names that hold nothing we need (see the module docstring).
_HF_IGNORED = (
    _compile(_HF_FINAL_NORM),
    _compile(_SWIN_BLOCK_HF + "attention.self.relative_position_index"),
)
# Our derived buffer, recomputed from the window size.
_RELATIVE_POSITION_INDEX = _SWIN_BLOCK + "attn.relative_position_index"


def _unmapped_error(names: Sequence[str], side: str, hint: str) -> UnmappedKeysError:
    shown = "\n  ".join(sorted(names)[:20])
    more = f"\n  ... and {len(names) - 20} more" if len(names) > 20 else ""
    return UnmappedKeysError(
        f"{len(names)} {side} parameter name(s) cannot be mapped:\n  {shown}{more}\n{hint}"
    )


def hf_to_d2_state_dict(
    hf_state: Mapping[str, torch.Tensor], window_size: int
) -> Dict[str, torch.Tensor]:
    """Rename a Hugging Face Mask2Former (Swin) state dict to ours.

    Args:
        hf_state: the tensors of the folder's safetensors file(s), by name.
        window_size: the Swin window size, to recompute ``relative_position_index``.

    Returns:
        Our state dict, every tensor a new contiguous copy.

    Raises:
        UnmappedKeysError: names that no rule maps (listed), or a fused projection with a
            missing part.
    """
    converted: Dict[str, torch.Tensor] = {}
    fused_parts: Dict[str, Dict[int, torch.Tensor]] = {}
    fused_sources: Dict[str, List[str]] = {}
    unmapped = []
    compiled = [(rule, rule.hf_patterns()) for rule in RULES]
    for name, tensor in hf_state.items():
        if any(pattern.fullmatch(name) for pattern in _HF_IGNORED):
            continue
        for rule, patterns in compiled:
            match = next(
                ((part, m) for part, p in enumerate(patterns) if (m := p.fullmatch(name))), None
            )
            if match is None:
                continue
            part, found = match
            ours = _fill(rule.ours, rule.to_ours(found.groupdict()))
            if len(rule.hf) == 1:
                converted[ours] = tensor.detach().clone().contiguous()
            else:
                fused_parts.setdefault(ours, {})[part] = tensor
                fused_sources[ours] = [_fill(t, found.groupdict()) for t in rule.hf]
            break
        else:
            unmapped.append(name)
    if unmapped:
        raise _unmapped_error(
            unmapped,
            "Hugging Face",
            "Only Mask2FormerForUniversalSegmentation checkpoints with a Swin backbone, as "
            "transformers writes them, are supported.",
        )
    incomplete = []
    for ours, parts in fused_parts.items():
        if len(parts) != 3:
            missing = [name for part, name in enumerate(fused_sources[ours]) if part not in parts]
            incomplete.append(f"{ours} (concatenates query, key and value; missing {missing})")
            continue
        converted[ours] = torch.cat([parts[0], parts[1], parts[2]], dim=0).contiguous()
    if incomplete:
        raise _unmapped_error(incomplete, "fused", "The query, key and value parts must all exist.")
    index = _relative_position_index(window_size)
    block = _compile(_SWIN_BLOCK + "norm1.weight")
    for found in [block.fullmatch(name) for name in converted]:
        if found:
            converted[_fill(_RELATIVE_POSITION_INDEX, found.groupdict())] = index.clone()
    return converted


def d2_to_hf_state_dict(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename our state dict (Swin backbone) to Hugging Face's on-disk names.

    Args:
        state: our model's ``state_dict()``.

    Returns:
        Hugging Face's state dict, every tensor a new contiguous copy (as safetensors needs).

    Raises:
        UnmappedKeysError: names that no rule maps (e.g. a ResNet backbone), listed.
    """
    converted: Dict[str, torch.Tensor] = {}
    unmapped = []
    relative_index = _compile(_RELATIVE_POSITION_INDEX)
    compiled = [(rule, rule.ours_pattern()) for rule in RULES]
    for name, tensor in state.items():
        if relative_index.fullmatch(name):
            continue
        for rule, pattern in compiled:
            found = pattern.fullmatch(name)
            if found is None:
                continue
            groups = rule.to_hf(found.groupdict())
            parts = tensor.chunk(3, dim=0) if len(rule.hf) == 3 else (tensor,)
            for template, part in zip(rule.hf, parts):
                converted[_fill(template, groups)] = part.detach().clone().contiguous()
            break
        else:
            unmapped.append(name)
    if unmapped:
        raise _unmapped_error(
            unmapped,
            "our",
            "Only Mask2Former models with a Swin backbone (D2SwinTransformer), the "
            "MSDeformAttnPixelDecoder and the MultiScaleMaskedTransformerDecoder exist in "
            "transformers.",
        )
    final_channels = _final_stage_channels(converted)
    if final_channels is not None:
        converted[_fill(_HF_FINAL_NORM, {"p": "weight"})] = torch.ones(final_channels)
        converted[_fill(_HF_FINAL_NORM, {"p": "bias"})] = torch.zeros(final_channels)
    return converted


def _final_stage_channels(hf_state: Mapping[str, torch.Tensor]) -> Optional[int]:
    """Channels of the last Swin stage (the width of the unused ``swin.layernorm``)."""
    norm = _compile(_SWIN_BLOCK_HF + "layernorm_after.weight")
    stages = [
        (int(found.group("i")), tensor.shape[0])
        for name, tensor in hf_state.items()
        if (found := norm.fullmatch(name))
    ]
    return max(stages)[1] if stages else None
