"""Tests of the video instance segmentation model: the 3D position embedding, the video
transformer decoder, the matcher and criterion on video masks, and VideoMaskFormer.

Models are the shipped youtubevis configs shrunk by ``helpers.shrunk_config``, on the CPU,
with clips of small random frames.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Instances
from helpers import needs_cuda, shrunk_config
from scipy.optimize import linear_sum_assignment
from test_criterion import FixedMatcher, _criterion
from test_matcher import _reference_cost
from test_transformer_decoder import HIDDEN, MASK_DIM, QUERIES, _cfg

from mask2former.modeling.criterion import SetCriterion
from mask2former.modeling.matcher import HungarianMatcher
from mask2former.modeling.meta_arch import video_clips
from mask2former.modeling.position_encoding import PositionEmbeddingSine3D
from mask2former.modeling.transformer_decoder import build_transformer_decoder

VIDEO_R50 = "youtubevis_2019/video_maskformer2_R50_bs16_8ep.yaml"
VIDEO_SWIN_TINY = "youtubevis_2019/swin/video_maskformer2_swin_tiny_bs16_8ep.yaml"
IMAGE_R50 = "coco/instance-segmentation/maskformer2_R50_bs16_50ep.yaml"
LEVEL_SIZES = [(2, 3), (4, 6), (8, 12)]


# ---------------------------------------------------------------- position embedding


def _direct_embedding(not_mask, num_feats, temperature, normalize):
    """(N, T, H, W) valid pixels -> (N, T, 2F, H, W), channel by channel from the formula."""
    positions = [not_mask.double().cumsum(dim) for dim in (1, 2, 3)]  # t, y, x counts
    if normalize:
        lasts = [positions[0][:, -1:], positions[1][:, :, -1:], positions[2][:, :, :, -1:]]
        positions = [p / (last + 1e-6) * 2 * math.pi for p, last in zip(positions, lasts)]
    t_pos, y_pos, x_pos = positions

    def channel(pos, index, width):
        phase = pos / temperature ** (2 * (index // 2) / width)
        return phase.sin() if index % 2 == 0 else phase.cos()

    channels = [channel(y_pos, i, num_feats) for i in range(num_feats)]
    channels += [channel(x_pos, i, num_feats) for i in range(num_feats)]
    channels = [c + channel(t_pos, i, 2 * num_feats) for i, c in enumerate(channels)]
    return torch.stack(channels, 2)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
def test_position_embedding_3d_equals_the_formula(normalize, with_mask):
    num_feats, temperature = 6, 100.0
    encoding = PositionEmbeddingSine3D(num_feats, temperature=temperature, normalize=normalize)
    x = torch.zeros(2, 3, 5, 4, 7)
    mask = None
    not_mask = torch.ones(2, 3, 4, 7, dtype=torch.bool)
    if with_mask:
        mask = torch.zeros(2, 3, 4, 7, dtype=torch.bool)
        mask[1, :, 3:] = True  # padded rows
        mask[1, :, :, 5:] = True  # padded columns
        not_mask = ~mask
    pos = encoding(x, mask)
    assert pos.shape == (2, 3, 2 * num_feats, 4, 7) and pos.dtype == torch.float32
    expected = _direct_embedding(not_mask, num_feats, temperature, normalize).float()
    torch.testing.assert_close(pos, expected, atol=1e-5, rtol=1e-5)


def test_position_embedding_3d_dtype_follows_input():
    encoding = PositionEmbeddingSine3D(8, normalize=True)
    x = torch.zeros(1, 2, 3, 5, 5)
    half = encoding(x.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), encoding(x), atol=0.02, rtol=0)


# ---------------------------------------------------------------- decoder


def _decoders(dec_layers=4, num_frames=2, queries=QUERIES):
    """(image decoder, video decoder) of the same config, built from the same seed."""
    cfg = _cfg(dec_layers=dec_layers, queries=queries)
    cfg.INPUT.SAMPLING_FRAME_NUM = num_frames
    torch.manual_seed(0)
    image = build_transformer_decoder(cfg, HIDDEN)
    cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "VideoMultiScaleMaskedTransformerDecoder"
    torch.manual_seed(0)
    video = build_transformer_decoder(cfg, HIDDEN)
    return image, video


def _frame_inputs(frames, sizes=LEVEL_SIZES, mask_size=(16, 24), seed=1):
    generator = torch.Generator().manual_seed(seed)
    features = [torch.randn(frames, HIDDEN, h, w, generator=generator) for h, w in sizes]
    return features, torch.randn(frames, MASK_DIM, *mask_size, generator=generator)


def test_video_decoder_has_the_image_decoders_parameters():
    image, video = _decoders()
    assert type(video).__name__ == "VideoMultiScaleMaskedTransformerDecoder"
    assert {k: v.shape for k, v in video.state_dict().items()} == {
        k: v.shape for k, v in image.state_dict().items()
    }
    video.load_state_dict(image.state_dict(), strict=True)
    assert video.num_frames == 2


def test_video_decoder_shapes_in_training_and_eval():
    _, video = _decoders(dec_layers=3, num_frames=3)
    features, mask_features = _frame_inputs(6)  # training: 2 videos of 3 frames
    out = video(features, mask_features)
    assert out["pred_logits"].shape == (2, QUERIES, 6)
    assert out["pred_masks"].shape == (2, QUERIES, 3, 16, 24)
    assert [aux["pred_masks"].shape for aux in out["aux_outputs"]] == [(2, QUERIES, 3, 16, 24)] * 2
    assert [aux["pred_logits"].shape for aux in out["aux_outputs"]] == [(2, QUERIES, 6)] * 2
    video.eval()  # eval: the whole input is one video, whatever num_frames
    features, mask_features = _frame_inputs(5)
    with torch.no_grad():
        out = video(features, mask_features)
    assert out["pred_logits"].shape == (1, QUERIES, 6)
    assert out["pred_masks"].shape == (1, QUERIES, 5, 16, 24)
    assert out["aux_outputs"] == []


def test_video_decoder_videos_of_a_batch_are_independent():
    _, video = _decoders(num_frames=2)
    features, mask_features = _frame_inputs(4)
    together = video(features, mask_features)
    second = video([f[2:] for f in features], mask_features[2:])
    torch.testing.assert_close(together["pred_logits"][1:], second["pred_logits"])
    torch.testing.assert_close(together["pred_masks"][1:], second["pred_masks"])


def test_video_decoder_rejects_a_frame_count_that_is_not_a_multiple():
    _, video = _decoders(num_frames=2)
    with pytest.raises(ValueError, match="SAMPLING_FRAME_NUM"):
        video(*_frame_inputs(3))


def test_video_masked_positions_get_no_attention():
    # One query, one layer, level 0 at the mask resolution: the attention mask is the first
    # prediction's sign in every frame, laid out like the memory (frame outermost).
    _, video = _decoders(dec_layers=2, queries=1)
    video.aux_outputs_in_eval = True
    video.eval()
    features, mask_features = _frame_inputs(3, sizes=[(16, 24), (8, 12), (4, 6)])
    with torch.no_grad():
        out = video(features, mask_features)
    hidden = out["aux_outputs"][0]["pred_masks"][0, 0] < 0  # (T, H, W)
    assert 0 < hidden.sum() < hidden.numel()
    assert not torch.equal(hidden[0], hidden[1])  # frames have masks of their own
    outside = [features[0].masked_fill(hidden[:, None], 50.0), *features[1:]]
    inside = [features[0].masked_fill(~hidden[:, None], 50.0), *features[1:]]
    with torch.no_grad():
        out_outside = video(outside, mask_features)
        out_inside = video(inside, mask_features)
    torch.testing.assert_close(out_outside["pred_logits"], out["pred_logits"])
    torch.testing.assert_close(out_outside["pred_masks"], out["pred_masks"])
    assert not torch.allclose(out_inside["pred_logits"], out["pred_logits"])


@pytest.mark.parametrize("dec_layers", [2, 5])
def test_video_fast_eval_attention_masks_give_the_official_prediction(dec_layers):
    _, fast = _decoders(dec_layers=dec_layers)
    fast.eval()
    features, mask_features = _frame_inputs(3, sizes=[(3, 5), (5, 7), (9, 13)], mask_size=(17, 26))
    with torch.no_grad():
        fast_out = fast(features, mask_features)
        fast.aux_outputs_in_eval = True
        official_out = fast(features, mask_features)
        fast.aux_outputs_in_eval = False
        fast.mask_threshold = 0.0  # hides nothing
        unmasked = fast(features, mask_features)
    assert fast_out["aux_outputs"] == [] and len(official_out["aux_outputs"]) == dec_layers - 1
    torch.testing.assert_close(fast_out["pred_logits"], official_out["pred_logits"])
    torch.testing.assert_close(fast_out["pred_masks"], official_out["pred_masks"])
    # the attention masks matter here
    assert not torch.allclose(unmasked["pred_logits"], official_out["pred_logits"])


def test_video_decoder_is_finite_under_autocast():
    _, video = _decoders()
    video.eval()
    features, mask_features = _frame_inputs(3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = video(features, mask_features)
    assert out["pred_masks"].dtype == torch.bfloat16
    assert torch.isfinite(out["pred_masks"].float()).all()
    assert torch.isfinite(out["pred_logits"].float()).all()


# ---------------------------------------------------------------- matcher and criterion


def _video_batch(num_targets, frames, num_queries=6, num_classes=4, size=(8, 10), seed=0):
    generator = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(
            len(num_targets), num_queries, num_classes + 1, generator=generator
        ),
        "pred_masks": 3
        * torch.randn(len(num_targets), num_queries, frames, *size, generator=generator),
    }
    targets = [
        {
            "labels": torch.randint(num_classes, (m,), generator=generator),
            "masks": torch.rand(m, frames, 2 * size[0], 2 * size[1], generator=generator) > 0.5,
        }
        for m in num_targets
    ]
    return outputs, targets


def _without_frames(outputs, targets):
    """The T = 1 video batch as an image batch."""
    images = {"pred_logits": outputs["pred_logits"], "pred_masks": outputs["pred_masks"][:, :, 0]}
    return images, [{"labels": t["labels"], "masks": t["masks"][:, 0]} for t in targets]


def test_video_matcher_cost_equals_brute_force_and_assignment_uses_it():
    matcher = HungarianMatcher(class_weight=2.0, mask_weight=5.0, dice_weight=5.0, num_points=30)
    outputs, targets = _video_batch([3, 0, 2], frames=3)
    coords = torch.rand(3, 30, 2, generator=torch.Generator().manual_seed(1))
    costs = matcher.cost_matrices(outputs, targets, coords)
    assert [c.shape for c in costs] == [(6, 3), (6, 0), (6, 2)]
    for i, target in enumerate(targets):
        expected = _reference_cost(
            matcher,
            outputs["pred_logits"][i],
            outputs["pred_masks"][i],
            target["labels"],
            target["masks"],
            coords[i],
        )
        torch.testing.assert_close(costs[i], expected, atol=1e-5, rtol=1e-5)
    # forward draws one point set per video, (N, P, 2), and solves these matrices
    torch.manual_seed(5)
    indices = matcher(outputs, targets)
    torch.manual_seed(5)
    drawn = torch.rand(3, 30, 2)
    for (rows, cols), cost in zip(indices, matcher.cost_matrices(outputs, targets, drawn)):
        expected_rows, expected_cols = linear_sum_assignment(cost.numpy())
        assert rows.tolist() == expected_rows.tolist() and cols.tolist() == expected_cols.tolist()


def test_one_frame_video_matcher_and_criterion_equal_the_image_ones():
    outputs, targets = _video_batch([2, 0, 3], frames=1)
    image_outputs, image_targets = _without_frames(outputs, targets)
    matcher = HungarianMatcher(class_weight=2.0, mask_weight=5.0, dice_weight=5.0, num_points=40)
    criterion = SetCriterion(
        num_classes=4,
        matcher=matcher,
        weight_dict={"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0},
        no_object_weight=0.1,
        num_points=40,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
    )
    torch.manual_seed(7)
    video_indices = matcher(outputs, targets)
    video_losses = criterion(outputs, targets)
    torch.manual_seed(7)
    image_indices = matcher(image_outputs, image_targets)
    image_losses = criterion(image_outputs, image_targets)
    for (vq, vt), (iq, it) in zip(video_indices, image_indices):
        assert torch.equal(vq, iq) and torch.equal(vt, it)
    assert video_losses.keys() == image_losses.keys()
    for name in video_losses:
        assert torch.equal(video_losses[name], image_losses[name]), name


def test_video_mask_losses_sample_every_frame_and_divide_by_instances():
    # R = 2 matched instances of T = 3 frames are the R * T masks of one image, matched in
    # the same order: the same points are drawn (same seed), and the video losses, divided
    # by R instances, are T times the image losses, divided by R * T masks.
    frames = 3
    outputs, targets = _video_batch([2], frames=frames, num_queries=2)
    video = _criterion(FixedMatcher([([0, 1], [0, 1])]), num_classes=4, num_points=25)
    image = _criterion(
        FixedMatcher([(list(range(6)), list(range(6)))]), num_classes=4, num_points=25
    )
    image_outputs = {
        "pred_logits": torch.randn(1, 6, 5),
        "pred_masks": outputs["pred_masks"].flatten(1, 2),
    }
    image_targets = [
        {
            "labels": targets[0]["labels"].repeat_interleave(frames),
            "masks": targets[0]["masks"].flatten(0, 1),
        }
    ]
    torch.manual_seed(3)
    video_losses = video(outputs, targets)
    torch.manual_seed(3)
    image_losses = image(image_outputs, image_targets)
    for name in ("loss_mask", "loss_dice"):
        torch.testing.assert_close(video_losses[name], frames * image_losses[name])


# ---------------------------------------------------------------- VideoMaskFormer


def _model(path=VIDEO_R50, **overrides):
    cfg = shrunk_config(path)
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value
    torch.manual_seed(0)
    return build_model(cfg), cfg


def _frames(count, height=48, width=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)
        for _ in range(count)
    ]


def _frame_instances(classes, ids, masks):
    instances = Instances(tuple(masks.shape[-2:]))
    instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
    instances.gt_ids = torch.tensor(ids, dtype=torch.int64)
    instances.gt_masks = BitMasks(masks)
    return instances


def _clip_with_instances(num_frames, height=48, width=64):
    """Two instances; the second is absent (id -1, empty mask) in the first frame."""
    frames = []
    for t in range(num_frames):
        masks = torch.zeros(2, height, width, dtype=torch.bool)
        masks[0, 4 + t : 20 + t, 5:30] = True
        if t > 0:
            masks[1, 25:45, 30 + t : 60] = True
        frames.append(_frame_instances([1, 3], [7, 9 if t > 0 else -1], masks))
    return {"image": _frames(num_frames, height, width), "instances": frames}


def _empty_clip(num_frames, height=48, width=64):
    empty = torch.zeros(0, height, width, dtype=torch.bool)
    instances = [_frame_instances([], [], empty) for _ in range(num_frames)]
    return {"image": _frames(num_frames, height, width, seed=1), "instances": instances}


@pytest.mark.parametrize("path", [VIDEO_R50, VIDEO_SWIN_TINY])
def test_training_step_reaches_every_parameter(path, one_thread):
    model, cfg = _model(path)
    model.train()
    num_frames = cfg.INPUT.SAMPLING_FRAME_NUM
    losses = model([_clip_with_instances(num_frames), _empty_clip(num_frames)])
    # 3 losses for the final prediction and for each of DEC_LAYERS - 1 auxiliary ones
    assert len(losses) == 3 * cfg.MODEL.MASK_FORMER.DEC_LAYERS
    assert all(torch.isfinite(value) for value in losses.values())
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []


def test_training_without_any_instance_still_reaches_the_mask_head(one_thread):
    model, cfg = _model()
    model.train()
    losses = model([_empty_clip(2), _empty_clip(2)])
    sum(losses.values()).backward()
    assert model.sem_seg_head.predictor.mask_embed.layers[-1].weight.grad is not None


def test_targets_keep_instances_present_in_some_frame():
    model, _ = _model()
    clip = _clip_with_instances(2)
    absent = torch.zeros(1, 48, 64, dtype=torch.bool)
    clip["instances"] = [  # a third instance, absent from both frames
        _frame_instances(
            [*x.gt_classes.tolist(), 2],
            [*x.gt_ids.tolist(), -1],
            torch.cat([x.gt_masks.tensor, absent]),
        )
        for x in clip["instances"]
    ]
    images = model.preprocess_image([clip])
    assert images.tensor.shape == (2, 3, 64, 64)  # padded to a multiple of 32
    (target,) = model.prepare_targets([clip["instances"]], images)
    assert target["labels"].tolist() == [1, 3]
    assert target["masks"].shape == (2, 2, 64, 64)
    for t, instances in enumerate(clip["instances"]):
        assert torch.equal(target["masks"][:, t, :48], instances.gt_masks.tensor[:2])
    assert not target["masks"][:, :, 48:].any()
    assert not target["masks"][1, 0].any()  # absent in frame 0


def test_count_targets_is_what_the_criterion_gets():
    # gradient accumulation counts the targets of its batches before running them
    model, cfg = _model()
    model.train()
    num_frames = cfg.INPUT.SAMPLING_FRAME_NUM
    clips = [_clip_with_instances(num_frames), _empty_clip(num_frames)]
    absent = torch.zeros(1, 48, 64, dtype=torch.bool)
    clips[0]["instances"] = [  # a third instance, absent from every frame: not a target
        _frame_instances(
            [*x.gt_classes.tolist(), 2],
            [*x.gt_ids.tolist(), -1],
            torch.cat([x.gt_masks.tensor, absent]),
        )
        for x in clips[0]["instances"]
    ]
    images = model.preprocess_image(clips)
    targets = model.prepare_targets([clip["instances"] for clip in clips], images)
    assert model.count_targets(clips) == sum(len(t["labels"]) for t in targets) == 2
    clips[1]["instances"] = clips[1]["instances"][:1]
    with pytest.raises(ValueError, match="one Instances per frame"):
        model.count_targets(clips)


def test_inference_output_format_sizes_and_sorted_scores():
    model, cfg = _model()
    model.eval()
    videos = [
        {"image": _frames(3, 40, 56), "height": 61, "width": 83},
        {"image": _frames(5, 48, 64, seed=2)},  # no height/width: the frame size
    ]
    with torch.no_grad():
        results = model(videos)
    assert len(results) == 2
    limit = cfg.MODEL.MASK_FORMER.TEST.DETECTIONS_PER_VIDEO
    for result, frames, size in zip(results, (3, 5), ((61, 83), (48, 64))):
        assert set(result) == {"image_size", "pred_scores", "pred_labels", "pred_masks"}
        assert result["image_size"] == size
        count = len(result["pred_scores"])
        assert 0 < count <= limit
        assert len(result["pred_labels"]) == len(result["pred_masks"]) == count
        assert result["pred_scores"] == sorted(result["pred_scores"], reverse=True)  # descending
        assert all(isinstance(s, float) and 0 <= s <= 1 for s in result["pred_scores"])
        assert all(isinstance(c, int) and 0 <= c < 40 for c in result["pred_labels"])
        for mask in result["pred_masks"]:
            assert mask.shape == (frames, *size) and mask.dtype == torch.bool
            assert mask.device.type == "cpu"


@pytest.mark.parametrize("frames_per_pass", [1, 2])
def test_frames_per_pass_gives_the_all_at_once_result(frames_per_pass):
    model, _ = _model()
    model.eval()
    video = {"image": _frames(5, 40, 56, seed=3)}
    backbone_batches = []
    model.backbone.register_forward_hook(lambda m, args, out: backbone_batches.append(len(args[0])))
    with torch.no_grad():
        model.frames_per_pass = 0
        (expected,) = model([video])
        model.frames_per_pass = frames_per_pass
        (chunked,) = model([video])
    per_pass = [frames_per_pass] * (5 // frames_per_pass) + [5 % frames_per_pass] * (
        5 % frames_per_pass > 0
    )
    assert backbone_batches == [5] + per_pass  # all at once, then in passes
    assert chunked["pred_labels"] == expected["pred_labels"]
    torch.testing.assert_close(chunked["pred_scores"], expected["pred_scores"], rtol=0, atol=1e-5)
    for mask, expected_mask in zip(chunked["pred_masks"], expected["pred_masks"]):
        assert (mask != expected_mask).float().mean() < 1e-3  # float rounding at the threshold


def test_frames_per_pass_must_not_be_negative():
    with pytest.raises(ValueError, match="FRAMES_PER_PASS must be >= 0"):
        _model(**{"MODEL.MASK_FORMER.TEST.FRAMES_PER_PASS": -1})


@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_inference_equals_the_official_computation(threshold, monkeypatch):
    model, _ = _model(**{"MODEL.MASK_FORMER.TEST.MASK_THRESHOLD": threshold})
    model.eval()
    with torch.no_grad():  # larger mask logits, so that both thresholds cut through masks
        model.sem_seg_head.predictor.mask_embed.layers[-1].weight.mul_(20)
    video = {"image": _frames(3, 40, 56), "height": 61, "width": 83}
    with torch.no_grad():
        (result,) = model([video])
        monkeypatch.setattr(video_clips, "RESIZE_FRAMES", 2)  # chunks of 2 + 1 frames
        (chunked,) = model([video])
        images = model.preprocess_image([video])
        outputs = model.network(images.tensor)
    probs = outputs["pred_logits"][0].softmax(-1)[:, :-1]
    scores, flat = probs.flatten().topk(10)
    queries, labels = flat // 40, flat % 40
    masks = F.interpolate(outputs["pred_masks"][0][queries], size=(64, 64), mode="bilinear")
    masks = F.interpolate(masks[..., :40, :56], size=(61, 83), mode="bilinear").sigmoid()
    torch.testing.assert_close(torch.tensor(result["pred_scores"]), scores)
    assert result["pred_labels"] == labels.tolist()
    got = torch.stack(result["pred_masks"])
    disagree = (got != (masks > threshold)).float().mean()
    assert disagree < 1e-3  # the fused resize equals the two-step one up to rounding
    assert torch.equal(torch.stack(chunked["pred_masks"]), got)
    assert 0 < got.float().mean() < 1


def test_inference_post_processing_is_float32_under_autocast():
    model, _ = _model()
    generator = torch.Generator().manual_seed(4)
    class_logits = torch.randn(5, 41, generator=generator).bfloat16()
    mask_logits = (4 * torch.randn(5, 3, 12, 16, generator=generator)).bfloat16()
    sizes = ((48, 64), (45, 60), (90, 120))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = model.inference_video(class_logits, mask_logits, *sizes)
    in_float32 = model.inference_video(class_logits.float(), mask_logits.float(), *sizes)
    assert under_autocast["pred_scores"] == in_float32["pred_scores"]
    assert under_autocast["pred_labels"] == in_float32["pred_labels"]
    for first, second in zip(under_autocast["pred_masks"], in_float32["pred_masks"]):
        assert torch.equal(first, second)


def test_inference_with_no_detections():
    model, _ = _model(**{"MODEL.MASK_FORMER.TEST.DETECTIONS_PER_VIDEO": 0})
    model.eval()
    with torch.no_grad():
        (result,) = model([{"image": _frames(2), "height": 30, "width": 40}])
    assert result == {
        "image_size": (30, 40),
        "pred_scores": [],
        "pred_labels": [],
        "pred_masks": [],
    }


def test_video_and_image_models_have_the_same_parameters():
    video, cfg = _model()
    image_cfg = shrunk_config(IMAGE_R50)
    image_cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    torch.manual_seed(1)
    image = build_model(image_cfg)
    assert type(video).__name__ == "VideoMaskFormer" and type(image).__name__ == "MaskFormer"
    shapes = {k: v.shape for k, v in video.state_dict().items()}
    assert shapes == {k: v.shape for k, v in image.state_dict().items()}
    result = video.load_state_dict(image.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(
        video.state_dict()["sem_seg_head.predictor.class_embed.weight"],
        image.state_dict()["sem_seg_head.predictor.class_embed.weight"],
    )


def test_inputs_are_checked():
    model, _ = _model()
    model.eval()
    with pytest.raises(ValueError, match="'image', a non-empty list"):
        model([{"image": torch.zeros(3, 32, 32)}])
    with pytest.raises(ValueError, match="'image', a non-empty list"):
        model([{"image": []}])
    model.train()
    with pytest.raises(ValueError, match="SAMPLING_FRAME_NUM is 2"):
        model([_clip_with_instances(3)])
    with pytest.raises(ValueError, match="needs 'instances'"):
        model([{"image": _frames(2)}])
    clip = _clip_with_instances(2)
    clip["instances"][1] = clip["instances"][1][:1]
    with pytest.raises(ValueError, match=r"same instances.*\[2, 1\]"):
        model([clip])


@pytest.mark.cuda
@needs_cuda
@pytest.mark.usefixtures("no_tf32")
@pytest.mark.parametrize("precision", [None, torch.bfloat16, torch.float16])
def test_cuda_inference_matches_the_cpu(precision):
    model, cfg = _model()
    assert_cuda_result_matches_the_cpu(model, _frames(4, 48, 64, seed=4), precision)


def assert_cuda_result_matches_the_cpu(model, frames, precision):
    """Run ``model`` on one video on the CPU, then on CUDA (under autocast in ``precision``
    when given), and compare: CPU masks of the frames' size, the same scores."""
    model.eval()
    video = {"image": frames}
    autocast = torch.autocast("cuda", dtype=precision or torch.float32, enabled=bool(precision))
    with torch.no_grad():
        (expected,) = model([video])
        model.to("cuda")
        with autocast:
            (result,) = model([video])
    size = (len(frames), *frames[0].shape[-2:])
    assert all(m.device.type == "cpu" and m.shape == size for m in result["pred_masks"])
    # scores only: a random model's class probabilities are near ties, whose order may differ
    tolerance = 1e-4 if precision is None else 0.05  # as test_head's CUDA autocast test
    scores, expected_scores = (torch.tensor(r["pred_scores"]) for r in (result, expected))
    torch.testing.assert_close(scores, expected_scores, rtol=0, atol=tolerance)


@pytest.mark.cuda
@needs_cuda
def test_cuda_training_step_under_amp_is_finite():
    model, cfg = _model()
    model.to("cuda").train()
    with torch.autocast("cuda", dtype=torch.float16):
        losses = model([_clip_with_instances(cfg.INPUT.SAMPLING_FRAME_NUM)])
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all()
        for p in model.parameters()
        if p.requires_grad
    )
