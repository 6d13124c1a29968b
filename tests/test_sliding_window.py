"""Sliding-window inference (MODEL.MASK_FORMER.TEST.SLIDING_WINDOW): where the windows go, how
instances of several windows merge and panoptic segments are combined, what the model returns,
and the settings it refuses."""

import os
from unittest import mock

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from helpers import ROOT, TINY_CONFIG, TINY_TRAINING, shrunk_config

import mask2former.data  # noqa: F401  only registration
from mask2former import Predictor
from mask2former import modeling as _modeling  # noqa: F401  only registration
from mask2former.config import load_config
from mask2former.modeling.sliding_window import (
    SlidingWindow,
    WindowInstance,
    combine_panoptic,
    merge_window_instances,
    paste_instances,
    window_starts,
)

SEMANTIC_ONLY = [
    "MODEL.MASK_FORMER.TEST.PANOPTIC_ON", "False",
    "MODEL.MASK_FORMER.TEST.INSTANCE_ON", "False",
]  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "length, window, stride",
    [(100, 40, 30), (100, 40, 40), (100, 40, 7), (40, 40, 10), (30, 40, 10), (101, 50, 25)],
)
def test_windows_cover_every_pixel_and_stay_inside(length, window, stride):
    starts = window_starts(length, window, stride)
    covered = np.zeros(length, dtype=int)
    for start in starts:
        covered[start : start + min(window, length)] += 1
    assert (covered > 0).all()
    assert starts[0] == 0 and starts == sorted(set(starts))
    assert all(0 <= start <= max(length - window, 0) for start in starts)
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))
    if length > window:  # the last window ends at the border
        assert starts[-1] + window == length


def test_boxes_are_the_grid_of_the_two_sides():
    sliding = SlidingWindow(size=(40, 64), stride=(30, 48))
    boxes = sliding.boxes(100, 50)
    heights = {b - t for t, _, b, _ in boxes}
    widths = {right - left for _, left, _, right in boxes}
    assert heights == {40} and widths == {50}  # the width clipped to the image
    assert [t for t, _, _, _ in boxes] == window_starts(100, 40, 30)


@pytest.mark.parametrize(
    "size, stride, per_pass, message",
    [
        ([512, 512], [600, 300], 1, "STRIDE \\[600, 300\\] is larger than"),
        ([512], [341, 341], 1, "SIZE must be two positive integers"),
        ([512, 0], [341, 341], 1, "SIZE must be two positive integers"),
        ([512, 512], [341, -1], 1, "STRIDE must be two positive integers"),
        ([512, 512], [341, 341], 0, "WINDOWS_PER_PASS must be an integer >= 1"),
    ],
)
def test_bad_settings_name_the_key(size, stride, per_pass, message):
    with pytest.raises(ValueError, match=message) as error:
        SlidingWindow.from_values(size, stride, per_pass, where="MODEL.MASK_FORMER.TEST.X")
    assert "MODEL.MASK_FORMER.TEST.X." in str(error.value)


def _model(*opts):
    cfg = load_config(TINY_CONFIG, [*SEMANTIC_ONLY, *opts])
    torch.manual_seed(0)
    return build_model(cfg).eval()


def _sliding(size, stride, per_pass=1):
    return [
        "MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.ENABLED", "True",
        "MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.SIZE", str(list(size)),
        "MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.STRIDE", str(list(stride)),
        "MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.WINDOWS_PER_PASS", str(per_pass),
    ]  # fmt: skip


def _image(height, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), generator=generator).float()


def test_a_window_as_large_as_the_image_is_whole_image_inference():
    image = _image(64, 96)
    whole = _model()
    sliding = _model(*_sliding((128, 128), (64, 64)))
    sliding.load_state_dict(whole.state_dict())
    inputs = [{"image": image, "height": 80, "width": 120}]
    with torch.no_grad():
        (expected,) = whole(inputs)
        (actual,) = sliding(inputs)
    assert actual.keys() == {"sem_seg"}
    assert actual["sem_seg"].shape == (7, 80, 120)
    torch.testing.assert_close(actual["sem_seg"], expected["sem_seg"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("per_pass", [1, 4])
def test_overlapping_windows_average_what_each_window_gives_alone(per_pass):
    height, width = 80, 112
    image = _image(height, width, seed=1)
    whole = _model()
    sliding = _model(*_sliding((64, 64), (32, 40), per_pass))
    sliding.load_state_dict(whole.state_dict())
    # independently: each window through the whole-image path, then the mean per pixel
    total = torch.zeros(7, height, width)
    count = torch.zeros(height, width)
    tops, lefts = window_starts(height, 64, 32), window_starts(width, 64, 40)
    with torch.no_grad():
        for top in tops:
            for left in lefts:
                crop = image[:, top : top + 64, left : left + 64]
                (result,) = whole([{"image": crop}])
                total[:, top : top + 64, left : left + 64] += result["sem_seg"]
                count[top : top + 64, left : left + 64] += 1
        (actual,) = sliding([{"image": image}])
    assert len(tops) * len(lefts) == 6 and count.max() > 1  # windows do overlap
    torch.testing.assert_close(actual["sem_seg"], total / count, rtol=1e-4, atol=1e-5)


def test_the_window_settings_change_the_result():
    """The test above can fail: other windows give other scores."""
    image = _image(80, 112, seed=1)
    first = _model(*_sliding((64, 64), (32, 40)))
    second = _model(*_sliding((48, 48), (32, 32)))
    second.load_state_dict(first.state_dict())
    with torch.no_grad():
        (a,) = first([{"image": image}])
        (b,) = second([{"image": image}])
    assert not torch.allclose(a["sem_seg"], b["sem_seg"], atol=1e-3)


def test_every_output_from_overlapping_windows(tmp_path):
    # the tiny config has the semantic, instance and panoptic outputs on
    model = _model(
        *INSTANCES_TOO, "MODEL.MASK_FORMER.TEST.PANOPTIC_ON", "True", *_sliding((64, 64), (32, 40))
    )
    assert model._thing_classes() == {0, 1, 2, 3}  # the shapes metadata; 3 stuff classes
    with torch.no_grad():
        (output,) = model([{"image": _image(80, 112, seed=1)}])
    assert set(output) == {"sem_seg", "instances", "panoptic_seg"}
    panoptic_seg, segments = output["panoptic_seg"]
    assert panoptic_seg.shape == (80, 112) and panoptic_seg.dtype == torch.int32
    ids = [segment["id"] for segment in segments]
    assert ids == list(range(1, len(segments) + 1))
    assert set(torch.unique(panoptic_seg).tolist()) <= {0, *ids}
    for segment in segments:
        assert segment["area"] == int((panoptic_seg == segment["id"]).sum()) > 0
        assert segment["isthing"] == (segment["category_id"] in {0, 1, 2, 3})


def _instance(score, label, box, window, fill=None):
    """A WindowInstance whose mask fills its box (or ``fill``, a bool array of its size)."""
    x0, y0, x1, y1 = box
    mask = torch.ones((y1 - y0, x1 - x0), dtype=torch.bool) if fill is None else fill
    return WindowInstance(score, label, box, mask, frozenset([window]))


def _full(item, size=(20, 30)):
    canvas = torch.zeros(size, dtype=torch.bool)
    x0, y0, x1, y1 = item.box
    canvas[y0:y1, x0:x1] = item.mask
    return canvas


def test_an_object_cut_by_a_window_border_is_merged_with_its_whole_view():
    whole = _instance(0.9, 1, (5, 2, 15, 12), window=0)
    cut = _instance(0.6, 1, (10, 2, 15, 12), window=1)  # its right half, seen by window 1
    (merged,) = merge_window_instances([cut, whole], match_threshold=0.5)
    assert merged.score == 0.9 and merged.label == 1 and merged.box == (5, 2, 15, 12)
    assert merged.windows == {0, 1}
    assert torch.equal(_full(merged), _full(whole) | _full(cut))


def test_two_halves_become_one_instance_covering_both():
    left = _instance(0.7, 2, (0, 0, 12, 10), window=0)
    right = _instance(0.8, 2, (8, 0, 20, 10), window=1)  # 4 of 12 columns shared: 1/3
    assert len(merge_window_instances([left, right], match_threshold=0.5)) == 2
    (merged,) = merge_window_instances([left, right], match_threshold=0.3)
    assert merged.box == (0, 0, 20, 10) and merged.score == 0.8 and merged.area == 200


def test_what_is_not_merged():
    a = _instance(0.9, 1, (0, 0, 10, 10), window=0)
    other_class = _instance(0.8, 2, (0, 0, 10, 10), window=1)
    same_window = _instance(0.7, 1, (0, 0, 10, 10), window=0)
    apart = _instance(0.6, 1, (15, 0, 25, 10), window=1)
    empty = WindowInstance(
        0.5, 1, (0, 0, 0, 0), torch.zeros((0, 0), dtype=torch.bool), frozenset([1])
    )
    kept = merge_window_instances([apart, empty, same_window, other_class, a], 0.5)
    assert [item.score for item in kept] == [0.9, 0.8, 0.7, 0.6, 0.5]  # by score, none merged


def test_panoptic_combination_of_things_and_stuff():
    scores = torch.zeros(4, 20, 30)  # classes 0, 1 things; 2, 3 stuff
    scores[2, :, :15] = 1.0  # stuff 2 on the left half (300 px)
    scores[3, :, 15:] = 1.0  # stuff 3 on the right half
    scores[3, :2, 15:17] = 0.0
    scores[0, :2, 15:17] = 1.0  # a few thing-class pixels in the semantic scores: not stuff
    things = [
        _instance(0.9, 0, (0, 0, 10, 10), 0),  # 100 px
        _instance(0.8, 1, (5, 5, 15, 15), 0),  # 100 px, a quarter under the first: kept
        _instance(0.7, 0, (0, 0, 8, 8), 1),  # entirely under the first: dropped
        _instance(0.3, 1, (20, 10, 30, 20), 1),  # below the score threshold: dropped
        _instance(0.95, 2, (20, 0, 30, 5), 1),  # a stuff class: not a thing
    ]
    combine = {"thing_classes": {0, 1}, "instance_score_threshold": 0.5, "overlap_threshold": 0.5}
    ranked = sorted(things, key=lambda item: -item.score)
    panoptic_seg, segments = combine_panoptic(ranked, scores, **combine, stuff_area_limit=100)
    assert [(s["category_id"], s["isthing"], s["area"]) for s in segments] == [
        (0, True, 100),
        (1, True, 75),
        (2, False, 300 - 100 - 75),  # the left half less the things
        (3, False, 300 - 4),  # the right half less the thing-class pixels
    ]
    assert int((panoptic_seg == 0).sum()) == 4  # the thing-class pixels of no instance
    for segment in segments:
        assert int((panoptic_seg == segment["id"]).sum()) == segment["area"]
    _, large_only = combine_panoptic(ranked, scores, **combine, stuff_area_limit=200)
    assert [s["category_id"] for s in large_only] == [0, 1, 3]  # 125 px of stuff 2: too few


def test_paste_gives_full_size_instances():
    items = [
        _instance(0.9, 1, (5, 2, 15, 12), 0),
        _instance(0.4, 3, (0, 0, 0, 0), 1, torch.zeros((0, 0), dtype=torch.bool)),
    ]
    result = paste_instances(items, (20, 30), torch.device("cpu"))
    assert result.image_size == (20, 30) and result.pred_masks.shape == (2, 20, 30)
    assert torch.equal(result.pred_masks[0], _full(items[0]))
    assert not result.pred_masks[1].any()
    assert result.pred_boxes.tensor.tolist() == [[5, 2, 15, 12], [0, 0, 0, 0]]
    assert result.pred_classes.tolist() == [1, 3]


INSTANCES_TOO = [
    "MODEL.MASK_FORMER.TEST.PANOPTIC_ON", "False",
    "MODEL.MASK_FORMER.TEST.INSTANCE_ON", "True",
]  # fmt: skip


def _by_score(instances):
    order = instances.scores.argsort(descending=True)
    return instances[order]


def test_one_window_gives_the_whole_image_instances():
    image = _image(64, 96)
    whole = _model(*INSTANCES_TOO)
    sliding = _model(*INSTANCES_TOO, *_sliding((128, 128), (64, 64)))
    sliding.load_state_dict(whole.state_dict())
    with torch.no_grad():
        (expected,) = whole([{"image": image}])
        (actual,) = sliding([{"image": image}])
    expected, actual = _by_score(expected["instances"]), actual["instances"]
    assert len(actual) == len(expected) == 8 * 7  # every (query, class) pair of the tiny model
    torch.testing.assert_close(actual.scores, expected.scores, rtol=1e-5, atol=1e-6)
    assert torch.equal(actual.pred_classes, expected.pred_classes)
    assert torch.equal(actual.pred_masks, expected.pred_masks)
    torch.testing.assert_close(actual.pred_boxes.tensor, expected.pred_boxes.tensor)


def test_instances_from_overlapping_windows_at_the_output_size():
    model = _model(*INSTANCES_TOO, *_sliding((64, 64), (32, 40), 2))
    with torch.no_grad():
        (output,) = model([{"image": _image(80, 112, seed=1), "height": 40, "width": 56}])
    instances = output["instances"]
    assert output["sem_seg"].shape == (7, 40, 56)
    assert instances.image_size == (40, 56) and instances.pred_masks.shape[1:] == (40, 56)
    assert 0 < len(instances) <= model.test_topk_per_image
    assert (instances.scores[:-1] >= instances.scores[1:]).all()
    assert ((instances.pred_classes >= 0) & (instances.pred_classes < 7)).all()


def test_video_model_refuses_windows():
    cfg = shrunk_config("shapes/video_maskformer2_R18.yaml")
    cfg.merge_from_list(_sliding((64, 64), (32, 32)))
    with pytest.raises(ValueError, match="VideoMaskFormer: MODEL.MASK_FORMER.TEST.SLIDING_WINDOW"):
        build_model(cfg)


def test_predictor_with_windows_at_the_original_resolution():
    # INPUT.MIN_SIZE_TEST 0: no test-time resize, the windows in the picture's own pixels
    opts = [*SEMANTIC_ONLY, *_sliding((48, 48), (32, 32)), "INPUT.MIN_SIZE_TEST", "0"]
    predictor = Predictor(TINY_CONFIG, "", opts=opts)
    picture = np.random.default_rng(0).integers(0, 256, (70, 130, 3), dtype=np.uint8)
    seen = []
    network = predictor.model.network

    def recording_network(images):
        seen.append(tuple(images.shape))
        return network(images)

    with mock.patch.object(predictor.model, "network", recording_network):
        (prediction,) = predictor.predict_arrays([picture])
    # 2 x 4 windows of 48 x 48 px of the 70 x 130 picture, one per forward
    assert seen == [(1, 3, 64, 64)] * 8  # each padded to a multiple of 32
    assert prediction.semantic.label_map.shape == (70, 130)
    assert prediction.panoptic is None and prediction.instances is None


@pytest.mark.parametrize(
    "config_name, task, metric",
    [
        ("maskformer2_R18_semantic.yaml", "sem_seg", "mIoU"),
        ("maskformer2_R18_instance.yaml", "segm", "AP"),
        ("maskformer2_R18_panoptic.yaml", "panoptic_seg", "PQ"),
    ],
)
def test_evaluation_through_the_real_evaluators(tmp_path, config_name, task, metric):
    from mask2former.engine import MaskFormerTrainer

    config = os.path.join(ROOT, "configs", "shapes", config_name)
    opts = [*TINY_TRAINING, *_sliding((96, 96), (64, 64), 2), "OUTPUT_DIR", str(tmp_path)]
    cfg = load_config(config, opts)
    torch.manual_seed(0)
    model = build_model(cfg)
    results = MaskFormerTrainer.test(cfg, model)
    assert 0.0 <= results[task][metric] <= 100.0, results


def test_test_time_augmentation_runs_the_windows_of_every_augmented_image():
    from mask2former.engine import SemanticSegmentorWithTTA

    opts = [*_sliding((48, 48), (32, 32)), "TEST.AUG.MIN_SIZES", "(64, 96)"]
    opts += ["TEST.AUG.MAX_SIZE", "200", "TEST.AUG.FLIP", "True"]
    cfg = load_config(TINY_CONFIG, [*SEMANTIC_ONLY, *opts])
    model = build_model(cfg).eval()
    seen = []
    network = model.network

    def recording_network(images):
        seen.append(tuple(images.shape[-2:]))
        return network(images)

    image = _image(64, 96).to(torch.uint8)
    with mock.patch.object(model, "network", recording_network):
        (output,) = SemanticSegmentorWithTTA(cfg, model)(
            [{"image": image, "height": 64, "width": 96}]
        )
    assert output["sem_seg"].shape == (7, 64, 96)
    # 64 x 96 px: 2 x 3 windows; 96 x 144 px: 3 x 4; each size also flipped
    assert len(seen) == 2 * (2 * 3 + 3 * 4)
    assert set(seen) == {(64, 64)}  # 48 px windows padded to a multiple of 32


def test_no_instances_resize_to_an_empty_output():
    from detectron2.structures import Boxes, Instances

    from mask2former.modeling.meta_arch.mask_former import _instances_at_output_size

    empty = Instances((8, 10))
    empty.pred_masks = torch.zeros((0, 8, 10), dtype=torch.bool)
    empty.pred_boxes = Boxes(torch.zeros((0, 4)))
    empty.scores = torch.zeros(0)
    empty.pred_classes = torch.zeros(0, dtype=torch.int64)
    resized = _instances_at_output_size(empty, (4, 5))
    assert resized.image_size == (4, 5) and resized.pred_masks.shape == (0, 4, 5)
    assert len(resized) == 0
