"""Post-processing against straightforward reference implementations written here."""

import pytest
import torch
import torch.nn.functional as F

from mask2former.modeling.postprocessing import (
    BAND_BLOCK_SIZE,
    instance_inference,
    instance_queries,
    mask_boxes,
    panoptic_inference,
    panoptic_queries,
    resize_mask_logits,
    semantic_inference,
)

THINGS = {0, 1, 2}


def _reference_resize(mask_logits, padded_size, image_size, output_size):
    """Upsample to the padded size, crop the image, resize: two full-size interpolations."""
    upsampled = F.interpolate(mask_logits[None], size=padded_size, mode="bilinear")
    cropped = upsampled[:, :, : image_size[0], : image_size[1]]
    return F.interpolate(cropped, size=output_size, mode="bilinear", align_corners=False)[0]


def _reference_semantic(class_logits, mask_probs):
    class_probs = class_logits.softmax(-1)[:, :-1]
    result = torch.zeros(class_probs.shape[1], *mask_probs.shape[1:])
    for q in range(len(class_logits)):
        for k in range(class_probs.shape[1]):
            result[k] += class_probs[q, k] * mask_probs[q]
    return result


def _reference_panoptic(class_logits, mask_probs, things, object_threshold, overlap_threshold):
    """The definition, one query and one mask at a time."""
    scores, labels = class_logits.softmax(-1).max(-1)
    num_classes = class_logits.shape[-1] - 1
    keep = [
        q for q in range(len(scores)) if labels[q] != num_classes and scores[q] > object_threshold
    ]
    seg = torch.zeros(mask_probs.shape[1:], dtype=torch.int32)
    info = []
    if not keep:
        return seg, info
    weighted = torch.stack([scores[q] * mask_probs[q] for q in keep])
    winner = weighted.argmax(0)
    stuff = {}
    for k, q in enumerate(keep):
        category = int(labels[q])
        won = winner == k
        own = mask_probs[q] >= 0.5
        segment = won & own
        if won.sum() == 0 or own.sum() == 0 or segment.sum() == 0:
            continue
        if won.sum() / own.sum() < overlap_threshold:
            continue
        isthing = category in things
        if not isthing and category in stuff:
            seg[segment] = stuff[category]
            continue
        new_id = len(info) + 1
        if not isthing:
            stuff[category] = new_id
        seg[segment] = new_id
        info.append({"id": new_id, "isthing": isthing, "category_id": category})
    for entry in info:
        entry["area"] = int((seg == entry["id"]).sum())
    return seg, info


def _reference_boxes(masks):
    boxes = torch.zeros(len(masks), 4)
    for i, mask in enumerate(masks):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(ys):
            boxes[i] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return boxes


def _reference_instances(class_logits, mask_probs, topk, things):
    """Score every (query, class) pair, sort, keep top-k, then (optionally) things only."""
    class_probs = class_logits.softmax(-1)[:, :-1]
    pairs = [
        (float(class_probs[q, k]), q, k)
        for q in range(class_probs.shape[0])
        for k in range(class_probs.shape[1])
    ]
    pairs = sorted(pairs, key=lambda p: -p[0])[:topk]
    if things is not None:
        pairs = [p for p in pairs if p[2] in things]
    masks = torch.stack([mask_probs[q] > 0.5 for _, q, _ in pairs])
    scores = torch.tensor(
        [s * float(mask_probs[q][m].sum() / (m.sum() + 1e-6)) for (s, q, _), m in zip(pairs, masks)]
    )
    classes = torch.tensor([k for _, _, k in pairs])
    return masks, scores, classes


def _random_prediction(num_queries=12, num_classes=6, size=(24, 30), seed=0):
    generator = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(num_queries, num_classes + 1, generator=generator) * 3
    mask_logits = torch.randn(num_queries, *size, generator=generator) * 4
    return class_logits, mask_logits


@pytest.mark.parametrize(
    "padded_size,image_size,output_size",
    [
        ((96, 128), (96, 128), (96, 128)),
        ((96, 128), (90, 117), (45, 60)),
        ((96, 128), (81, 128), (200, 300)),
        ((96, 128), (96, 101), (77, 53)),
        ((96, 128), (96, 128), (7, 9)),
        ((64, 64), (64, 64), (640, 48)),
    ],
)
def test_resize_equals_two_step_resize(padded_size, image_size, output_size):
    _, mask_logits = _random_prediction(size=(padded_size[0] // 4, padded_size[1] // 4))
    official = resize_mask_logits(mask_logits, padded_size, image_size, output_size, fused=False)
    torch.testing.assert_close(
        official, _reference_resize(mask_logits, padded_size, image_size, output_size)
    )
    for block_size in (BAND_BLOCK_SIZE, 10_000):  # blocks, and one dense product
        fused = resize_mask_logits(
            mask_logits, padded_size, image_size, output_size, block_size=block_size
        )
        assert fused.shape == (len(mask_logits), *output_size)
        torch.testing.assert_close(fused, official, atol=1e-5, rtol=1e-5)


def test_resize_is_differentiable():
    _, mask_logits = _random_prediction(num_queries=3, size=(8, 10))
    mask_logits.requires_grad_(True)
    resized = resize_mask_logits(mask_logits, (32, 40), (30, 37), (20, 25))
    expected = _reference_resize(mask_logits.detach(), (32, 40), (30, 37), (20, 25))
    torch.testing.assert_close(resized.detach(), expected, atol=1e-5, rtol=1e-5)
    resized.sum().backward()
    assert mask_logits.grad.abs().sum() > 0


def test_resize_is_differentiable_after_a_call_in_inference_mode():
    """The resampling weights are cached per size: made under torch.inference_mode first,
    they must still serve a later call that records gradients."""
    _, mask_logits = _random_prediction(num_queries=2, size=(7, 9))
    sizes = ((28, 36), (27, 33), (13, 17))  # used by no other test
    with torch.inference_mode():
        first = resize_mask_logits(mask_logits, *sizes)
    mask_logits.requires_grad_(True)
    resized = resize_mask_logits(mask_logits, *sizes)
    resized.sum().backward()
    assert torch.equal(resized.detach(), first) and mask_logits.grad.abs().sum() > 0


def test_semantic_inference_matches_reference():
    class_logits, mask_logits = _random_prediction()
    mask_probs = mask_logits.sigmoid()
    result = semantic_inference(class_logits, mask_probs)
    assert result.shape == (6, 24, 30) and result.dtype == torch.float32
    torch.testing.assert_close(result, _reference_semantic(class_logits, mask_probs))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("object_threshold,overlap_threshold", [(0.5, 0.8), (0.0, 0.0), (0.9, 0.5)])
def test_panoptic_inference_matches_reference(seed, object_threshold, overlap_threshold):
    class_logits, mask_logits = _random_prediction(num_classes=5, seed=seed)
    # Smooth blobs, as after upsampling.
    mask_probs = _reference_resize(mask_logits, (96, 120), (96, 120), (96, 120)).sigmoid()
    seg, info = panoptic_inference(
        class_logits,
        mask_probs,
        thing_classes=THINGS,
        object_mask_threshold=object_threshold,
        overlap_threshold=overlap_threshold,
        mask_threshold=0.5,
    )
    expected_seg, expected_info = _reference_panoptic(
        class_logits, mask_probs, THINGS, object_threshold, overlap_threshold
    )
    assert seg.dtype == torch.int32
    assert torch.equal(seg, expected_seg)
    assert info == expected_info


def test_panoptic_merges_stuff_and_drops_covered_segments():
    height, width = 8, 10
    # Queries: 0 thing class 0, 1 and 2 stuff class 4 (merged), 3 no-object, 4 covered by 0.
    class_logits = torch.full((5, 6), -10.0)
    for query, category in enumerate([0, 4, 4, 5, 1]):
        class_logits[query, category] = 10.0
    mask_probs = torch.full((5, height, width), 0.01)
    mask_probs[0, :4, :5] = 0.9
    mask_probs[1, :, 5:] = 0.8
    mask_probs[2, 4:, :5] = 0.8
    mask_probs[3] = 0.99
    mask_probs[4, :3, :4] = 0.7
    seg, info = panoptic_inference(
        class_logits,
        mask_probs,
        thing_classes=THINGS,
        object_mask_threshold=0.8,
        overlap_threshold=0.8,
        mask_threshold=0.5,
    )
    assert info == [
        {"id": 1, "isthing": True, "category_id": 0, "area": 20},
        {"id": 2, "isthing": False, "category_id": 4, "area": 60},
    ]
    assert (seg[:4, :5] == 1).all() and (seg[:, 5:] == 2).all() and (seg[4:, :5] == 2).all()


def test_panoptic_without_confident_queries_is_empty():
    class_logits, mask_logits = _random_prediction()
    class_logits[:, -1] = 100.0
    seg, info = panoptic_inference(
        class_logits,
        mask_logits.sigmoid(),
        thing_classes=THINGS,
        object_mask_threshold=0.8,
        overlap_threshold=0.8,
        mask_threshold=0.5,
    )
    assert info == [] and seg.shape == (24, 30) and (seg == 0).all()


@pytest.mark.parametrize("things", [None, THINGS])
def test_instance_inference_matches_reference(things):
    class_logits, mask_logits = _random_prediction(seed=3)
    mask_probs = _reference_resize(mask_logits, (96, 120), (90, 110), (60, 70)).sigmoid()
    mask_probs[5] = 0.1  # an empty mask: zero box, zero score
    instances = instance_inference(
        class_logits, mask_probs, topk=20, mask_threshold=0.5, thing_classes=things
    )
    masks, scores, classes = _reference_instances(class_logits, mask_probs, 20, things)
    assert instances.image_size == (60, 70)
    assert torch.equal(instances.pred_masks, masks)
    assert torch.equal(instances.pred_classes, classes)
    torch.testing.assert_close(instances.scores, scores)
    torch.testing.assert_close(instances.pred_boxes.tensor, _reference_boxes(masks))
    if things is not None:
        assert set(instances.pred_classes.tolist()) <= THINGS
    else:
        assert len(instances) == 20


def test_results_on_needed_queries_equal_results_on_all():
    class_logits, mask_logits = _random_prediction(num_queries=30, seed=5)
    mask_probs = _reference_resize(mask_logits, (96, 120), (96, 120), (48, 60)).sigmoid()
    needed = panoptic_queries(class_logits, 0.6)
    needed[instance_queries(class_logits, 10, THINGS)[2]] = True
    assert 0 < needed.sum() < len(needed)
    kwargs = {"object_mask_threshold": 0.6, "overlap_threshold": 0.8, "mask_threshold": 0.5}
    full = panoptic_inference(class_logits, mask_probs, thing_classes=THINGS, **kwargs)
    part = panoptic_inference(
        class_logits[needed], mask_probs[needed], thing_classes=THINGS, **kwargs
    )
    assert torch.equal(full[0], part[0]) and full[1] == part[1]
    full = instance_inference(
        class_logits, mask_probs, topk=10, mask_threshold=0.5, thing_classes=THINGS
    )
    part = instance_inference(
        class_logits[needed], mask_probs[needed], topk=10, mask_threshold=0.5, thing_classes=THINGS
    )
    assert torch.equal(full.pred_masks, part.pred_masks)
    assert torch.equal(full.scores, part.scores)
    assert torch.equal(full.pred_classes, part.pred_classes)


def _every_output(class_logits, mask_logits):
    mask_probs = resize_mask_logits(mask_logits, (96, 120), (90, 110), (60, 70)).sigmoid()
    semantic = semantic_inference(class_logits, mask_probs)
    segment_ids, segments = panoptic_inference(
        class_logits,
        mask_probs,
        thing_classes=THINGS,
        object_mask_threshold=0.5,
        overlap_threshold=0.8,
        mask_threshold=0.5,
    )
    instances = instance_inference(
        class_logits, mask_probs, topk=10, mask_threshold=0.5, thing_classes=THINGS
    )
    return {
        "mask_probs": mask_probs,
        "semantic": semantic,
        "segment_ids": segment_ids,
        "segments": segments,
        "instance masks": instances.pred_masks,
        "instance scores": instances.scores,
        "instance boxes": instances.pred_boxes.tensor,
        "instance classes": instances.pred_classes,
    }


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_post_processing_is_float32_under_autocast(dtype):
    """Called under autocast (as by a caller's own mixed-precision loop), the functions still
    compute in float32: the same results as without autocast."""
    class_logits, mask_logits = _random_prediction(num_queries=20, seed=2)
    expected = _every_output(class_logits, mask_logits)
    with torch.autocast("cpu", dtype=dtype):
        actual = _every_output(class_logits, mask_logits)
    assert actual["mask_probs"].dtype == actual["semantic"].dtype == torch.float32
    for name, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(actual[name], value), name
        else:
            assert actual[name] == value, name


def test_mask_boxes_edges_and_empty_masks():
    masks = torch.zeros(4, 6, 9, dtype=torch.bool)
    masks[0, 1:4, 2:7] = True
    masks[2, 5, 8] = True  # the bottom-right pixel
    masks[3] = True
    expected = torch.tensor([[2, 1, 7, 4], [0, 0, 0, 0], [8, 5, 9, 6], [0, 0, 9, 6]])
    assert torch.equal(mask_boxes(masks), expected.float())
    assert mask_boxes(masks[:0]).shape == (0, 4)
    _, mask_logits = _random_prediction(seed=4)
    torch.testing.assert_close(mask_boxes(mask_logits > 0), _reference_boxes(mask_logits > 0))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mask_boxes_do_not_synchronise_with_the_host_on_cuda():
    class_logits, mask_logits = _random_prediction(num_queries=30, seed=6)
    mask_probs = mask_logits.cuda().sigmoid()
    torch.cuda.synchronize()
    boxes_on_cpu = mask_boxes(mask_probs.cpu() > 0.5)
    torch.cuda.set_sync_debug_mode("error")
    try:
        boxes = mask_boxes(mask_probs > 0.5)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(boxes.cpu(), boxes_on_cpu)
