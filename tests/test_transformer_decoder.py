"""Tests of the masked-attention transformer decoder, its registry and the shared layers."""

import pytest
import torch
from detectron2.config import get_cfg

from mask2former.config import add_maskformer2_config
from mask2former.modeling.layers import MLP, get_activation_fn, get_norm_layer
from mask2former.modeling.transformer_decoder import (
    TRANSFORMER_DECODER_REGISTRY,
    build_transformer_decoder,
)

HIDDEN = 32
MASK_DIM = 16
QUERIES = 6
CLASSES = 5
LEVEL_SIZES = [(2, 3), (4, 6), (8, 12)]  # strides 32, 16, 8 of a 64x96 image


def _cfg(dec_layers=4, hidden=HIDDEN, queries=QUERIES, ffn=64, classes=CLASSES, mask_dim=MASK_DIM):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    mask_former = cfg.MODEL.MASK_FORMER
    mask_former.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"
    mask_former.HIDDEN_DIM = hidden
    mask_former.NUM_OBJECT_QUERIES = queries
    mask_former.NHEADS = 4 if hidden < 256 else 8
    mask_former.DIM_FEEDFORWARD = ffn
    mask_former.DEC_LAYERS = dec_layers
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = mask_dim
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = classes
    return cfg


def _decoder(in_channels=HIDDEN, aux_outputs_in_eval=False, **overrides):
    torch.manual_seed(0)
    cfg = _cfg(**overrides)
    cfg.MODEL.MASK_FORMER.TEST.AUX_OUTPUTS_IN_EVAL = aux_outputs_in_eval
    return build_transformer_decoder(cfg, in_channels)


def _inputs(batch=2, channels=HIDDEN, sizes=LEVEL_SIZES, mask_size=(16, 24)):
    torch.manual_seed(1)
    features = [torch.randn(batch, channels, h, w) for h, w in sizes]
    return features, torch.randn(batch, MASK_DIM, *mask_size)


def _expected_decoder_keys(hidden, queries, ffn, layers, classes, mask_dim, in_channels=None):
    """Official MultiScaleMaskedTransformerDecoder state dict, derived from the architecture."""
    expected = {}
    for i in range(layers):
        for name, attn in (
            ("transformer_self_attention_layers", "self_attn"),
            ("transformer_cross_attention_layers", "multihead_attn"),
        ):
            prefix = f"{name}.{i}."
            expected[prefix + attn + ".in_proj_weight"] = (3 * hidden, hidden)
            expected[prefix + attn + ".in_proj_bias"] = (3 * hidden,)
            expected[prefix + attn + ".out_proj.weight"] = (hidden, hidden)
            expected[prefix + attn + ".out_proj.bias"] = (hidden,)
            expected[prefix + "norm.weight"] = (hidden,)
            expected[prefix + "norm.bias"] = (hidden,)
        prefix = f"transformer_ffn_layers.{i}."
        expected[prefix + "linear1.weight"] = (ffn, hidden)
        expected[prefix + "linear1.bias"] = (ffn,)
        expected[prefix + "linear2.weight"] = (hidden, ffn)
        expected[prefix + "linear2.bias"] = (hidden,)
        expected[prefix + "norm.weight"] = (hidden,)
        expected[prefix + "norm.bias"] = (hidden,)
    expected["decoder_norm.weight"] = (hidden,)
    expected["decoder_norm.bias"] = (hidden,)
    expected["query_feat.weight"] = (queries, hidden)
    expected["query_embed.weight"] = (queries, hidden)
    expected["level_embed.weight"] = (3, hidden)
    if in_channels is not None:
        for level in range(3):
            expected[f"input_proj.{level}.weight"] = (hidden, in_channels, 1, 1)
            expected[f"input_proj.{level}.bias"] = (hidden,)
    expected["class_embed.weight"] = (classes + 1, hidden)
    expected["class_embed.bias"] = (classes + 1,)
    for i, (out_dim, in_dim) in enumerate([(hidden, hidden), (hidden, hidden), (mask_dim, hidden)]):
        expected[f"mask_embed.layers.{i}.weight"] = (out_dim, in_dim)
        expected[f"mask_embed.layers.{i}.bias"] = (out_dim,)
    return expected


def _shape_table(module):
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def test_state_dict_matches_official_coco_layout():
    # Official COCO panoptic values: DEC_LAYERS 10 = 9 layers, 133 classes, FFN 2048.
    decoder = build_transformer_decoder(
        _cfg(dec_layers=10, hidden=256, queries=100, ffn=2048, classes=133, mask_dim=256), 256
    )
    expected = _expected_decoder_keys(256, 100, 2048, 9, 133, 256)
    assert _shape_table(decoder) == expected


def test_input_projection_when_channels_differ_or_enforced():
    decoder = _decoder(in_channels=24, dec_layers=2)
    expected = _expected_decoder_keys(HIDDEN, QUERIES, 64, 1, CLASSES, MASK_DIM, in_channels=24)
    assert _shape_table(decoder) == expected
    cfg = _cfg(dec_layers=2)
    cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = True
    enforced = build_transformer_decoder(cfg, HIDDEN)
    assert enforced.state_dict()["input_proj.2.weight"].shape == (HIDDEN, HIDDEN, 1, 1)


def test_registry_builds_by_name_and_reads_config():
    cfg = _cfg(dec_layers=3)
    cfg.MODEL.MASK_FORMER.MASK_ATTENTION_THRESHOLD = 0.3
    cfg.MODEL.MASK_FORMER.NUM_FEATURE_LEVELS = 2
    cfg.MODEL.MASK_FORMER.PRE_NORM = True
    decoder = build_transformer_decoder(cfg, HIDDEN)
    assert type(decoder) is TRANSFORMER_DECODER_REGISTRY.get("MultiScaleMaskedTransformerDecoder")
    assert decoder.num_layers == 2  # DEC_LAYERS counts the learnable-query prediction
    assert decoder.mask_threshold == 0.3
    assert decoder.level_embed.weight.shape == (2, HIDDEN)
    assert decoder.transformer_ffn_layers[0].normalize_before


@pytest.mark.parametrize("dec_layers", [1, 4])
def test_output_shapes_and_aux_outputs(dec_layers):
    decoder = _decoder(dec_layers=dec_layers)
    features, mask_features = _inputs()
    out = decoder(features, mask_features)
    assert out["pred_logits"].shape == (2, QUERIES, CLASSES + 1)
    assert out["pred_masks"].shape == (2, QUERIES, 16, 24)
    assert out["pred_logits"].dtype == out["pred_masks"].dtype == torch.float32
    assert len(out["aux_outputs"]) == dec_layers - 1
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, QUERIES, CLASSES + 1)
        assert aux["pred_masks"].shape == (2, QUERIES, 16, 24)
    tensors = [out["pred_logits"], out["pred_masks"]]
    assert all(torch.isfinite(t).all() for t in tensors)


def test_first_prediction_comes_from_learnable_queries_only():
    decoder = _decoder(dec_layers=3, aux_outputs_in_eval=True).eval()
    features, mask_features = _inputs()
    other_features = [torch.randn_like(f) for f in features]
    with torch.no_grad():
        first = decoder(features, mask_features)["aux_outputs"][0]
        other = decoder(other_features, mask_features)["aux_outputs"][0]
    torch.testing.assert_close(first["pred_logits"], other["pred_logits"])
    torch.testing.assert_close(first["pred_masks"], other["pred_masks"])
    # Images share the learnable queries: same class logits for every image.
    torch.testing.assert_close(first["pred_logits"][0], first["pred_logits"][1])


def test_layers_visit_levels_round_robin():
    decoder = _decoder(dec_layers=4, aux_outputs_in_eval=True).eval()  # 3 layers: levels 0, 1, 2
    features, mask_features = _inputs()
    changed = list(features)
    changed[1] = torch.randn_like(features[1])
    with torch.no_grad():
        out = decoder(features, mask_features)
        out_changed = decoder(changed, mask_features)
    # aux_outputs[i] is the prediction after i layers; layer 0 reads level 0 only.
    torch.testing.assert_close(
        out["aux_outputs"][1]["pred_logits"], out_changed["aux_outputs"][1]["pred_logits"]
    )
    assert not torch.allclose(
        out["aux_outputs"][2]["pred_logits"], out_changed["aux_outputs"][2]["pred_logits"]
    )


def test_masked_positions_get_no_attention():
    # One query (no self-attention mixing), one layer, level 0 at the mask resolution so that
    # the attention mask is the first prediction's sign: hidden where its logits are < 0.
    decoder = _decoder(dec_layers=2, queries=1, aux_outputs_in_eval=True).eval()
    features, mask_features = _inputs(batch=1, sizes=[(16, 24), (8, 12), (4, 6)])
    with torch.no_grad():
        out = decoder(features, mask_features)
    hidden = out["aux_outputs"][0]["pred_masks"][0, 0] < 0
    assert 0 < hidden.sum() < hidden.numel()
    outside = [features[0].masked_fill(hidden, 50.0), *features[1:]]
    inside = [features[0].masked_fill(~hidden, 50.0), *features[1:]]
    with torch.no_grad():
        out_outside = decoder(outside, mask_features)
        out_inside = decoder(inside, mask_features)
    torch.testing.assert_close(out_outside["pred_logits"], out["pred_logits"])
    torch.testing.assert_close(out_outside["pred_masks"], out["pred_masks"])
    assert not torch.allclose(out_inside["pred_logits"], out["pred_logits"])


def test_query_with_empty_mask_attends_everywhere():
    decoder = _decoder(dec_layers=3).eval()
    # Mask logits = (W x + b) . f: with W = 0, b > 0 and f < 0 every mask is empty.
    last = decoder.mask_embed.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(1.0)
    features, _ = _inputs()
    mask_features = -torch.ones(2, MASK_DIM, 16, 24)
    no_threshold = _decoder(dec_layers=3).eval()
    no_threshold.load_state_dict(decoder.state_dict())
    no_threshold.mask_threshold = 0.0  # sigmoid is never < 0: nothing hidden
    with torch.no_grad():
        out = decoder(features, mask_features)
        expected = no_threshold(features, mask_features)
    assert torch.isfinite(out["pred_logits"]).all()
    torch.testing.assert_close(out["pred_logits"], expected["pred_logits"])


def test_attention_mask_layout():
    decoder = _decoder(dec_layers=2)
    logits = torch.full((2, 3, 4, 4), -5.0)  # all hidden
    logits[0, 1, :2] = 5.0  # image 0, query 1: top half visible
    attn_mask = decoder._attention_mask(logits)
    heads = decoder.num_heads
    assert attn_mask.shape == (2 * heads, 3, 16) and attn_mask.dtype == torch.bool
    # nn.MultiheadAttention's layout: index = image * heads + head.
    for head in range(heads):
        assert attn_mask[head, 1, :8].logical_not().all() and attn_mask[head, 1, 8:].all()
        assert not attn_mask[head, 0].any()  # empty mask: attends everywhere
        assert not attn_mask[heads + head].any()


@pytest.mark.parametrize("dec_layers", [2, 4, 8])
def test_fast_eval_attention_masks_give_the_official_prediction(dec_layers):
    # MODEL.MASK_FORMER.TEST.AUX_OUTPUTS_IN_EVAL False (the default) makes each attention mask
    # from mask features resized to the level; True resizes the full-size mask logits (the
    # official way). Linear maps commute, so the predictions agree; non-integer size ratios
    # included. Nothing in a random decoder's masks sits on the threshold within rounding.
    fast = _decoder(dec_layers=dec_layers).eval()
    official = _decoder(dec_layers=dec_layers, aux_outputs_in_eval=True).eval()
    official.load_state_dict(fast.state_dict())
    sizes = [(3, 5), (5, 7), (9, 13)]
    features, mask_features = _inputs(sizes=sizes, mask_size=(17, 26))
    with torch.no_grad():
        fast_out = fast(features, mask_features)
        official_out = official(features, mask_features)
    assert fast_out["aux_outputs"] == [] and len(official_out["aux_outputs"]) == dec_layers - 1
    torch.testing.assert_close(fast_out["pred_logits"], official_out["pred_logits"])
    torch.testing.assert_close(fast_out["pred_masks"], official_out["pred_masks"])
    # the attention masks matter here: hiding nothing changes the prediction
    fast.mask_threshold = 0.0
    with torch.no_grad():
        unmasked = fast(features, mask_features)
    assert not torch.allclose(unmasked["pred_logits"], official_out["pred_logits"])


def test_every_parameter_gets_a_gradient():
    decoder = _decoder(in_channels=24, dec_layers=4)
    features, mask_features = _inputs(channels=24)
    mask_features.requires_grad_(True)
    out = decoder(features, mask_features)
    loss = out["pred_logits"].square().sum() + out["pred_masks"].square().sum()
    for aux in out["aux_outputs"]:
        loss = loss + aux["pred_logits"].square().sum() + aux["pred_masks"].square().sum()
    loss.backward()
    no_grad = [
        key
        for key, parameter in decoder.named_parameters()
        if parameter.grad is None or not parameter.grad.abs().sum() > 0
    ]
    assert no_grad == []
    assert mask_features.grad is not None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_finite_under_autocast(dtype):
    decoder = _decoder(dec_layers=4).eval()
    features, mask_features = _inputs()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        out = decoder([f.to(dtype) for f in features], mask_features.to(dtype))
    assert out["pred_masks"].dtype == dtype
    assert torch.isfinite(out["pred_logits"].float()).all()
    assert torch.isfinite(out["pred_masks"].float()).all()


def test_pre_norm_decoder_runs():
    cfg = _cfg(dec_layers=3)
    cfg.MODEL.MASK_FORMER.PRE_NORM = True
    decoder = build_transformer_decoder(cfg, HIDDEN)
    features, mask_features = _inputs()
    out = decoder(features, mask_features)
    assert torch.isfinite(out["pred_masks"]).all()


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="DEC_LAYERS"):
        _decoder(dec_layers=0)
    decoder = _decoder(dec_layers=2)
    features, mask_features = _inputs()
    with pytest.raises(ValueError, match="3 multi-scale features"):
        decoder(features[:2], mask_features)


def test_mlp_layout_and_activation():
    mlp = MLP(4, 8, 3, 3)
    assert [tuple(p.shape) for p in mlp.state_dict().values()] == [
        (8, 4),
        (8,),
        (8, 8),
        (8,),
        (3, 8),
        (3,),
    ]
    single = MLP(2, 99, 1, 1)
    with torch.no_grad():
        single.layers[0].weight.copy_(torch.tensor([[1.0, -1.0]]))
        single.layers[0].bias.zero_()
    # No activation after the last layer: negative outputs survive.
    assert single(torch.tensor([[0.0, 2.0]])).item() == -2.0
    two = MLP(1, 1, 1, 2)
    with torch.no_grad():
        for layer in two.layers:
            layer.weight.fill_(1.0)
            layer.bias.zero_()
    # ReLU between layers: a negative hidden value is clipped.
    assert two(torch.tensor([[-3.0]])).item() == 0.0


def test_activation_and_norm_getters():
    assert get_activation_fn("relu")(torch.tensor(-1.0)) == 0
    with pytest.raises(ValueError, match="Unknown activation"):
        get_activation_fn("swishy")
    norm = get_norm_layer("GN", 32, 4)
    assert isinstance(norm, torch.nn.GroupNorm) and norm.num_groups == 4
    assert get_norm_layer("", 32) is None
    with pytest.raises(ValueError, match="divisible"):
        get_norm_layer("GN", 30, 4)


def test_single_prediction_is_from_learnable_queries():
    decoder = _decoder(dec_layers=1).eval()  # no attention layer at all
    features, mask_features = _inputs()
    with torch.no_grad():
        out = decoder(features, mask_features)
        queries = decoder.decoder_norm(decoder.query_feat.weight)
        logits = decoder.class_embed(queries)
        embeddings = decoder.mask_embed(queries)
    assert out["aux_outputs"] == []
    torch.testing.assert_close(out["pred_logits"], logits.expand(2, -1, -1))
    expected_masks = (embeddings[None, :, :, None, None] * mask_features[:, None]).sum(2)
    torch.testing.assert_close(out["pred_masks"], expected_masks, atol=1e-5, rtol=1e-5)
