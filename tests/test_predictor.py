"""The Predictor API on a tiny randomly initialised panoptic model (tests/configs)."""

import numpy as np
import pytest
import torch
from helpers import PRECISION_TOLERANCE, on_cuda, random_picture
from helpers import TINY_CONFIG as CONFIG
from PIL import Image

from mask2former import predictor as predictor_module
from mask2former.config import UnknownConfigKeyError
from mask2former.predictor import Predictor, WeightsNotFoundError
from mask2former.utils.image_io import ImageReadError
from mask2former.utils.results import InstanceResult, PanopticResult, Prediction, SemanticResult

SHAPES_CLASSES = ["circle", "triangle", "square", "cross", "sky", "ground", "water"]


@pytest.fixture(scope="module")
def predictor(weights):
    return Predictor(CONFIG, weights)


def _image(height=48, width=72, seed=0):
    return random_picture(height, width, seed)


def _check_prediction(prediction, height, width, *, probabilities=False):
    assert isinstance(prediction, Prediction)
    assert prediction.image_size == (height, width)
    assert prediction.available_tasks() == ["panoptic", "instance", "semantic"]

    panoptic = prediction.panoptic
    assert isinstance(panoptic, PanopticResult)
    assert panoptic.segment_ids.shape == (height, width)
    assert panoptic.segment_ids.dtype == np.int32
    ids_in_map = set(np.unique(panoptic.segment_ids).tolist()) - {0}
    assert ids_in_map <= {segment["id"] for segment in panoptic.segments}
    for segment in panoptic.segments:
        assert set(segment) == {"id", "category_id", "category_name", "isthing", "score", "area"}
        assert segment["area"] == int((panoptic.segment_ids == segment["id"]).sum())
        assert segment["category_name"] == SHAPES_CLASSES[segment["category_id"]]
        assert segment["isthing"] == (segment["category_id"] < 4)

    instances = prediction.instances
    assert isinstance(instances, InstanceResult)
    count = len(instances)
    assert instances.masks.shape == (count, height, width) and instances.masks.dtype == bool
    assert instances.boxes.shape == (count, 4) and instances.boxes.dtype == np.float32
    assert instances.scores.shape == (count,)
    assert np.all(np.diff(instances.scores) <= 0), "sorted by decreasing score"
    assert instances.class_names == [SHAPES_CLASSES[c] for c in instances.classes]
    for mask, (x0, y0, x1, y1) in zip(instances.masks, instances.boxes):
        if mask.any():
            ys, xs = np.nonzero(mask)
            assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)

    semantic = prediction.semantic
    assert isinstance(semantic, SemanticResult)
    assert semantic.label_map.shape == (height, width)
    assert semantic.label_map.min() >= 0 and semantic.label_map.max() < len(SHAPES_CLASSES)
    assert semantic.class_names == SHAPES_CLASSES
    if probabilities:
        assert semantic.probabilities.shape == (len(SHAPES_CLASSES), height, width)
    else:
        assert semantic.probabilities is None


def _assert_same(first: Prediction, second: Prediction):
    np.testing.assert_array_equal(first.panoptic.segment_ids, second.panoptic.segment_ids)
    np.testing.assert_array_equal(first.semantic.label_map, second.semantic.label_map)
    np.testing.assert_array_equal(first.instances.masks, second.instances.masks)
    np.testing.assert_allclose(first.instances.scores, second.instances.scores, atol=1e-5)


def test_numpy_pil_path_and_batch_give_the_documented_structures(predictor, tmp_path):
    image = _image()
    path = tmp_path / "image.png"
    Image.fromarray(image).save(path)
    gray = image.mean(axis=2).astype(np.uint8)

    batch = predictor([image, Image.fromarray(image), str(path), Image.fromarray(gray)])
    assert isinstance(batch, list) and len(batch) == 4
    for prediction in batch:
        _check_prediction(prediction, 48, 72)
    _assert_same(batch[0], batch[1])
    _assert_same(batch[0], batch[2])

    single = predictor(image)
    _check_prediction(single, 48, 72)
    _assert_same(single, batch[0])


def test_bgr_arrays(predictor, weights):
    image = _image()
    bgr_predictor = Predictor(CONFIG, weights, array_channel_order="BGR")
    _assert_same(predictor(image), bgr_predictor(image[:, :, ::-1].copy()))


def test_weights_are_loaded(predictor, weights):
    image = _image(seed=1)
    torch.manual_seed(123)  # a different random initialisation, overwritten by the weights
    reloaded = Predictor(CONFIG, weights=weights)
    _assert_same(predictor(image), reloaded(image))


def test_predict_batch_keeps_order_and_sizes(predictor):
    images = [_image(40, 56, seed=2), _image(64, 48, seed=3), _image(30, 30, seed=4)]
    results = list(predictor.predict_batch(iter(images), batch_size=2))
    assert [r.image_size for r in results] == [(40, 56), (64, 48), (30, 30)]
    with pytest.raises(ValueError, match="batch_size"):
        next(predictor.predict_batch(images, batch_size=0))


def test_unreadable_input_raises_before_running(predictor, tmp_path):
    with pytest.raises(ImageReadError, match="missing.jpg: no such file"):
        predictor([_image(), str(tmp_path / "missing.jpg")])


def test_one_pixel_and_large_images_are_resized_for_the_model(predictor, monkeypatch):
    seen = []
    forward = predictor.model.forward

    def spy(batched_inputs):
        seen.extend(tuple(item["image"].shape) for item in batched_inputs)
        return forward(batched_inputs)

    monkeypatch.setattr(predictor.model, "forward", spy)
    tiny = predictor(np.full((1, 1, 3), 200, dtype=np.uint8))
    assert tiny.image_size == (1, 1)
    assert tiny.panoptic.segment_ids.shape == (1, 1)
    assert tiny.semantic.label_map.shape == (1, 1)
    assert tiny.instances.masks.shape[1:] == (1, 1)
    # MIN_SIZE_TEST 64, MAX_SIZE_TEST 96 (tests/configs/demo_tiny_shapes.yaml)
    assert seen[0] == (3, 64, 64)

    large = predictor(_image(600, 1000, seed=5))
    assert seen[1] == (3, 58, 96), "long side capped at MAX_SIZE_TEST"
    _check_prediction(large, 600, 1000)


def test_probabilities_and_score_threshold(weights):
    image = _image(seed=6)
    unfiltered = Predictor(CONFIG, weights)(image).instances
    threshold = float(np.median(unfiltered.scores))
    assert unfiltered.scores.min() < threshold

    predictor = Predictor(CONFIG, weights, return_probabilities=True, score_threshold=threshold)
    prediction = predictor(image)
    probabilities = prediction.semantic.probabilities
    assert probabilities.shape == (len(SHAPES_CLASSES), 48, 72)
    np.testing.assert_array_equal(probabilities.argmax(axis=0), prediction.semantic.label_map)

    kept = prediction.instances
    assert 0 < len(kept) < len(unfiltered)
    assert np.all(kept.scores >= threshold)
    assert len(kept) == np.sum(unfiltered.scores >= threshold)
    np.testing.assert_array_equal(unfiltered.filter(threshold).masks, kept.masks)


def _class_distribution(probabilities):
    """Each pixel's semantic probabilities normalised over the classes."""
    return probabilities / probabilities.sum(axis=0, keepdims=True)


def _assert_agrees_with_float32(actual: Prediction, expected: Prediction, precision: str):
    """``actual`` (run in ``precision``) is ``expected`` (float32 on the CPU) within
    helpers.PRECISION_TOLERANCE: instance scores and, in float32, the semantic probabilities;
    in reduced precision, each pixel's class distribution."""
    tolerance = PRECISION_TOLERANCE[precision]
    if precision != "fp32":  # it did run in reduced precision
        assert not np.array_equal(actual.semantic.probabilities, expected.semantic.probabilities)
    # the same query-class pairs are kept; close scores may swap places
    np.testing.assert_allclose(actual.instances.scores, expected.instances.scores, atol=tolerance)
    if precision == "fp32":
        np.testing.assert_allclose(
            actual.semantic.probabilities, expected.semantic.probabilities, atol=tolerance
        )
    else:
        np.testing.assert_allclose(
            _class_distribution(actual.semantic.probabilities),
            _class_distribution(expected.semantic.probabilities),
            atol=tolerance,
        )


# The CPU cases prove the comparison here; `pytest -m cuda` runs the others on a GPU.
@pytest.mark.parametrize(
    "device, precision",
    [
        ("cpu", "bf16"),
        ("cpu", "fp16"),
        on_cuda("cuda", "fp32"),
        on_cuda("cuda", "bf16"),
        on_cuda("cuda", "fp16"),
    ],
)
def test_device_and_precision_agree_with_float32_on_the_cpu(weights, no_tf32, device, precision):
    options = {"return_probabilities": True, "score_threshold": 0.0}
    images = [_image(), _image(seed=1)]
    expected = Predictor(CONFIG, weights, device="cpu", **options)(images)
    predictor = Predictor(CONFIG, weights, device=device, precision=precision, **options)
    assert next(predictor.model.parameters()).device.type == device
    for actual, reference in zip(predictor(images), expected):  # one batch of two
        _check_prediction(actual, 48, 72, probabilities=True)
        assert len(actual.instances) == len(reference.instances) > 0
        _assert_agrees_with_float32(actual, reference, precision)


def test_tasks_switch_outputs(weights):
    prediction = Predictor(CONFIG, weights, tasks=["semantic"])(_image())
    assert prediction.available_tasks() == ["semantic"]
    with pytest.raises(ValueError, match="tasks must be"):
        Predictor(CONFIG, weights, tasks=["panoptics"])


def test_missing_weights_file_is_named(tmp_path):
    missing = str(tmp_path / "model_final.pth")
    with pytest.raises(WeightsNotFoundError, match=f"Weights file '{missing}' does not exist"):
        Predictor(CONFIG, missing)
    with pytest.raises(WeightsNotFoundError, match="model_final.pth"):
        Predictor(CONFIG, opts=["MODEL.WEIGHTS", missing])


def test_config_typos_are_named(tmp_path):
    with pytest.raises(UnknownConfigKeyError, match="NUM_OBJECT_QUERYS.*NUM_OBJECT_QUERIES"):
        Predictor(CONFIG, "", opts=["MODEL.MASK_FORMER.NUM_OBJECT_QUERYS", "4"])
    config = tmp_path / "typo.yaml"
    config.write_text(f"_BASE_: {CONFIG}\nINPUT:\n  MIN_SIZE_TSET: 32\n")
    with pytest.raises(UnknownConfigKeyError, match="INPUT.MIN_SIZE_TSET.*MIN_SIZE_TEST"):
        Predictor(str(config), "")
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        Predictor(str(tmp_path / "nowhere.yaml"), "")
    with pytest.raises(ValueError, match="precision"):
        Predictor(CONFIG, "", precision="int8")


def test_cpu_allocator_is_left_alone_unless_asked(weights, monkeypatch):
    """A library object does not change the process: only tune_cpu_allocator=True does."""
    calls = []
    monkeypatch.setattr(predictor_module, "keep_freed_memory", lambda: calls.append(1) or True)
    Predictor(CONFIG, weights, device="cpu")
    assert calls == []
    Predictor(CONFIG, weights, device="cpu", tune_cpu_allocator=True)
    assert calls == [1]
