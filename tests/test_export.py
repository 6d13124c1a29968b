"""Export to ONNX and torch.export, and the ONNX Runtime backend of the Predictor and demo.

Models are randomly initialised and small: the tiny shapes model of the predictor tests, and
(marked slow) shrunk models built from the official R50 and Swin-T COCO panoptic configs.
"""

import json
import os
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from helpers import TINY_CONFIG as CONFIG
from helpers import assert_same_json, load_script, run_python, shrunk_config

from mask2former.config import load_config
from mask2former.export import (
    ExportedModelError,
    ExportError,
    MissingDependencyError,
    OnnxModelFile,
    describe_model,
    export,
    export_onnx,
    export_program,
    load_program,
    trace_program,
)
from mask2former.export.exporter import InferenceNetwork
from mask2former.modeling.pixel_decoder.ops import (
    kernel_available,
    ms_deform_attn,
    ms_deform_attn_reference,
)
from mask2former.predictor import Predictor

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

demo = load_script("demo/demo.py")
export_model = load_script("tools/export_model.py")

needs_kernel = pytest.mark.skipif(
    not kernel_available("cpu"), reason="the export needs the compiled deformable attention op"
)
pytestmark = needs_kernel

LOGIT_TOLERANCE = 1e-4
# (batch, height, width) of the normalised inputs: two sizes, batch 1 and 2
NETWORK_INPUTS = [(1, 64, 96), (2, 96, 64)]
# and for the official models a size whose Swin maps need no padding to whole windows at any
# stage (sides multiples of 32 * 7), where the others need it (and hold a single window in
# the last stages)
OFFICIAL_MODEL_INPUTS = NETWORK_INPUTS + [(1, 224, 448)]


def _images(batch, height, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, height, width, generator=generator)


def _pictures(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=size + (3,), dtype=np.uint8) for size in sizes]


@pytest.fixture(scope="module")
def tiny(weights, tmp_path_factory):
    """The tiny shapes model: weights file, and its ONNX export written by the tool."""
    onnx_path = str(tmp_path_factory.mktemp("tiny") / "tiny.onnx")
    status = export_model.main(
        ["--config-file", CONFIG, "--output", onnx_path, "--opts", "MODEL.WEIGHTS", weights]
    )
    assert status == 0
    return {"weights": weights, "onnx": onnx_path}


@pytest.fixture(scope="module")
def tiny_predictors(tiny):
    return (
        Predictor(CONFIG, tiny["weights"]),
        Predictor(tiny["onnx"], backend="onnxruntime"),
    )


def _assert_same_predictions(expected, actual):
    """Discrete results equal; scores and probabilities equal up to float rounding."""
    assert expected.image_size == actual.image_size
    np.testing.assert_array_equal(expected.panoptic.segment_ids, actual.panoptic.segment_ids)
    assert [{k: v for k, v in s.items() if k != "score"} for s in expected.panoptic.segments] == [
        {k: v for k, v in s.items() if k != "score"} for s in actual.panoptic.segments
    ]
    for first, second in zip(expected.panoptic.segments, actual.panoptic.segments):
        if first["score"] is None:
            assert second["score"] is None
        else:
            assert second["score"] == pytest.approx(first["score"], abs=1e-5)
    np.testing.assert_array_equal(expected.semantic.label_map, actual.semantic.label_map)
    np.testing.assert_array_equal(expected.instances.masks, actual.instances.masks)
    np.testing.assert_array_equal(expected.instances.boxes, actual.instances.boxes)
    np.testing.assert_array_equal(expected.instances.classes, actual.instances.classes)
    np.testing.assert_allclose(expected.instances.scores, actual.instances.scores, atol=1e-5)


def test_onnx_file_is_checked_standard_onnx_with_metadata(tiny):
    onnx.checker.check_model(tiny["onnx"])
    model = onnx.load(tiny["onnx"])
    props = {entry.key: entry.value for entry in model.metadata_props}
    assert json.loads(props["mask2former.class_names"]) == [
        "circle",
        "triangle",
        "square",
        "cross",
        "sky",
        "ground",
        "water",
    ]
    assert json.loads(props["mask2former.thing_classes"]) == [0, 1, 2, 3]
    assert props["mask2former.input_format"] == "RGB"
    assert props["mask2former.size_divisibility"] == "32"
    assert float(props["mask2former.object_mask_threshold"]) == 0.0
    assert [node.op_type for node in model.graph.node if node.domain not in ("", "ai.onnx")] == []
    assert "GridSample" in {node.op_type for node in model.graph.node} | {
        node.op_type for function in model.functions for node in function.node
    }
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["class_logits", "mask_logits"]


@pytest.mark.parametrize("batch, height, width", NETWORK_INPUTS)
def test_onnx_runtime_logits_match_pytorch(tiny, tiny_predictors, batch, height, width):
    pytorch, ort = tiny_predictors
    images = _images(batch, height, width)
    with torch.no_grad():
        expected = InferenceNetwork(pytorch.model)(images)
    actual = ort.model.network(images)
    for name, reference, value in zip(
        ("class_logits", "mask_logits"), expected, (actual["pred_logits"], actual["pred_masks"])
    ):
        assert value.shape == reference.shape, name
        torch.testing.assert_close(value, reference, atol=LOGIT_TOLERANCE, rtol=0, msg=name)


def test_onnx_runtime_predictions_equal_pytorch(tiny_predictors):
    pytorch, ort = tiny_predictors
    pictures = _pictures([(48, 72), (70, 50)])
    for batch in (pictures[:1], pictures):
        for expected, actual in zip(pytorch(batch), ort(batch)):
            _assert_same_predictions(expected, actual)
    assert ort.class_names == pytorch.class_names
    assert ort.input_format == pytorch.input_format


def test_onnx_runtime_sliding_window_equals_pytorch(tiny):
    # the windows are the model's pre- and post-processing: the same with the ONNX network
    opts = [
        "MODEL.MASK_FORMER.TEST.PANOPTIC_ON", "False",
        "MODEL.MASK_FORMER.TEST.INSTANCE_ON", "False",
        "MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.ENABLED", "True",
        "MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.SIZE", "[64, 64]",
        "MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.STRIDE", "[40, 40]",
        "MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.WINDOWS_PER_PASS", "2",
        "INPUT.MIN_SIZE_TEST", "0",
    ]  # fmt: skip
    pytorch = Predictor(CONFIG, tiny["weights"], opts=opts, return_probabilities=True)
    ort = Predictor(tiny["onnx"], backend="onnxruntime", opts=opts, return_probabilities=True)
    assert ort.model.sliding_window == pytorch.model.sliding_window
    (expected,), (actual,) = pytorch(_pictures([(100, 150)])), ort(_pictures([(100, 150)]))
    assert actual.panoptic is None and actual.instances is None
    np.testing.assert_array_equal(actual.semantic.label_map, expected.semantic.label_map)
    np.testing.assert_allclose(
        actual.semantic.probabilities, expected.semantic.probabilities, atol=1e-5
    )


def test_exported_program_reloads_and_matches(tiny, tiny_predictors, tmp_path, capsys):
    pytorch, _ = tiny_predictors
    path = str(tmp_path / "tiny.pt2")
    argv = ["--config-file", CONFIG, "--format", "exported-program", "--output", path]
    assert export_model.main(argv + ["--opts", "MODEL.WEIGHTS", tiny["weights"]]) == 0
    out = capsys.readouterr().out
    assert path in out and "MiB" in out
    assert "images" in out and "(N, 3, H, W)" in out and "multiples of 32, at least 64" in out
    assert "class_logits" in out and "(N, 8, 8)" in out
    assert "mask_logits" in out and "(N, 8, H/4, W/4)" in out
    program, description = load_program(path)
    assert description.thing_classes == [0, 1, 2, 3]
    assert description.config.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 8
    for batch, height, width in NETWORK_INPUTS:
        images = _images(batch, height, width, seed=1)
        with torch.no_grad():
            expected = InferenceNetwork(pytorch.model)(images)
            actual = program.module()(images)
        for reference, value in zip(expected, actual):
            torch.testing.assert_close(value, reference, atol=1e-5, rtol=0)


def test_export_reads_official_zoo_pickle_weights(tiny, tiny_predictors, tmp_path):
    """MODEL.WEIGHTS may be a .pkl in the official model zoo's format (numpy arrays,
    ``__author__``, ``matching_heuristics``): the program computes what the .pth model does."""
    import pickle

    pytorch, _ = tiny_predictors
    weights = str(tmp_path / "model_final.pkl")
    state = pytorch.model.state_dict()
    zoo = {
        "model": {name: value.numpy() for name, value in state.items()},
        "__author__": "FAIR",
        "matching_heuristics": True,
    }
    with open(weights, "wb") as file:
        pickle.dump(zoo, file)
    path = str(tmp_path / "zoo.pt2")
    argv = ["--config-file", CONFIG, "--format", "exported-program", "--output", path]
    assert export_model.main(argv + ["--opts", "MODEL.WEIGHTS", weights]) == 0
    program, _ = load_program(path)
    images = _images(1, 64, 96, seed=2)
    with torch.no_grad():
        expected = InferenceNetwork(pytorch.model)(images)
        actual = program.module()(images)
    for reference, value in zip(expected, actual):
        torch.testing.assert_close(value, reference, atol=1e-5, rtol=0)


def test_demo_on_the_onnx_file_writes_the_same_files(tiny, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for index, picture in enumerate(_pictures([(40, 56), (52, 44), (64, 64)], seed=3)):
        cv2.imwrite(str(inputs / f"image{index}.png"), picture)
    common = ["--input", str(inputs), "--batch-size", "2", "--confidence-threshold", "0"]
    pytorch_out, ort_out = tmp_path / "pytorch", tmp_path / "onnxruntime"
    # Detectron2's Visualizer jitters thing colours with np.random: same seed, same colours
    np.random.seed(0)
    assert (
        demo.main(
            [
                "--config-file",
                CONFIG,
                "--output",
                str(pytorch_out),
                *common,
                "--opts",
                "MODEL.WEIGHTS",
                tiny["weights"],
            ]
        )
        == 0
    )
    np.random.seed(0)
    assert demo.main(["--onnx", tiny["onnx"], "--output", str(ort_out), *common]) == 0
    names = sorted(os.listdir(pytorch_out))
    assert len(names) == 3 * 5  # picture, panoptic PNG + JSON, instances JSON, semantic PNG
    assert sorted(os.listdir(ort_out)) == names
    for name in names:
        expected, actual = pytorch_out / name, ort_out / name
        if name.endswith(".json"):
            assert_same_json(
                json.loads(expected.read_text()), json.loads(actual.read_text()), name, abs=1e-5
            )
        else:
            assert expected.read_bytes() == actual.read_bytes(), name


def test_web_demo_on_the_onnx_file_gives_the_same_results(tiny, tmp_path):
    pytest.importorskip("gradio", reason="the web demo needs gradio")
    from mask2former.apps.web import build_argument_parser, create_web_demo

    parser = build_argument_parser(default_config=CONFIG)
    pytorch = create_web_demo(
        parser.parse_args(["--config-file", CONFIG, "--opts", "MODEL.WEIGHTS", tiny["weights"]])
    )
    # --onnx alone: the file's stored config, not the default --config-file
    ort = create_web_demo(parser.parse_args(["--onnx", tiny["onnx"]]))
    assert ort.predictor.backend == "onnxruntime"
    assert "**backend:** onnxruntime" in ort.describe_model()
    assert "tiny (" in ort.model_name and "tiny.onnx" in ort.model_name
    image = str(tmp_path / "photo.png")
    cv2.imwrite(image, _pictures([(52, 70)], seed=5)[0])
    for task in ("panoptic", "instance", "semantic"):
        np.random.seed(0)  # the Visualizer's colour jitter
        expected = pytorch.segment_image(image, task, 0.0)
        np.random.seed(0)
        actual = ort.segment_image(image, task, 0.0)
        assert actual.picture is not None, actual.message
        np.testing.assert_array_equal(expected.picture, actual.picture)
        assert [os.path.basename(f) for f in expected.files] == [
            os.path.basename(f) for f in actual.files
        ]
        for first, second in zip(expected.files, actual.files):
            if first.endswith(".json"):
                with open(first) as a, open(second) as b:
                    assert_same_json(json.load(a), json.load(b), os.path.basename(first), abs=1e-5)
            else:
                with open(first, "rb") as a, open(second, "rb") as b:
                    assert a.read() == b.read(), first


def test_onnx_runtime_predictor_stays_on_the_cpu_under_a_cuda_config(tiny, monkeypatch):
    """ONNX Runtime runs on the CPU: a config saying MODEL.DEVICE cuda must not move the
    inputs to a GPU (as if there were one)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    ort = Predictor(tiny["onnx"], backend="onnxruntime", opts=["MODEL.DEVICE", "cuda"])
    assert ort.device == torch.device("cpu")
    assert ort.cfg.MODEL.DEVICE == "cpu"


class _Attention(torch.nn.Module):
    def __init__(self, shapes):
        super().__init__()
        spatial_shapes = torch.tensor(shapes)
        sizes = spatial_shapes.prod(1)
        self.register_buffer("spatial_shapes", spatial_shapes)
        self.register_buffer(
            "level_start_index", torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
        )

    def forward(self, value, locations, weights):
        return ms_deform_attn(
            value, self.spatial_shapes, self.level_start_index, locations, weights
        )


def test_onnx_translation_of_the_deformable_attention_op_matches_the_reference(tmp_path):
    from mask2former.export.onnx_ops import ONNX_OPSET, onnx_translations

    shapes = [(6, 8), (3, 4), (2, 2)]
    batch, queries, heads, channels, points = 2, 5, 2, 4, 3
    generator = torch.Generator().manual_seed(0)
    value = torch.randn(batch, sum(h * w for h, w in shapes), heads, channels, generator=generator)
    # locations beyond [0, 1] too: zero padding outside the maps
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=generator)
    locations = locations * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, len(shapes), points, generator=generator)
    module = _Attention(shapes).eval()
    program = torch.onnx.export(
        module,
        (value, locations, weights),
        custom_translation_table=onnx_translations(),
        opset_version=ONNX_OPSET,
        input_names=["value", "locations", "weights"],
    )
    path = str(tmp_path / "attention.onnx")
    program.save(path)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (actual,) = session.run(
        None, {"value": value.numpy(), "locations": locations.numpy(), "weights": weights.numpy()}
    )
    expected = ms_deform_attn_reference(
        value, module.spatial_shapes, module.level_start_index, locations, weights
    )
    np.testing.assert_allclose(actual, expected.numpy(), atol=1e-5, rtol=0)


def test_missing_and_wrong_files_are_named(tiny, tmp_path):
    missing = str(tmp_path / "missing.onnx")
    with pytest.raises(ExportedModelError, match="missing.onnx' does not exist"):
        Predictor(missing, backend="onnxruntime")
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("not a model")
    with pytest.raises(ExportedModelError, match="notes.onnx' cannot be loaded"):
        OnnxModelFile(str(not_onnx))
    model = onnx.load(tiny["onnx"])
    for entry in model.metadata_props:
        if entry.key == "mask2former.format_version":
            entry.value = "0"
    old = str(tmp_path / "old.onnx")
    onnx.save(model, old)
    with pytest.raises(ExportedModelError, match="version 0, this code reads version 1"):
        OnnxModelFile(old)
    del model.metadata_props[:]
    foreign = str(tmp_path / "foreign.onnx")
    onnx.save(model, foreign)
    with pytest.raises(ExportedModelError, match="not written by tools/export_model.py"):
        OnnxModelFile(foreign)


def test_demo_names_a_missing_onnx_file(tmp_path, capsys):
    missing = str(tmp_path / "missing.onnx")
    assert demo.main(["--onnx", missing, "--input", str(tmp_path)]) == 1
    assert "missing.onnx' does not exist" in capsys.readouterr().err


def test_image_size_the_model_cannot_take(tiny):
    ort = Predictor(
        tiny["onnx"], backend="onnxruntime", opts=["MODEL.MASK_FORMER.SIZE_DIVISIBILITY", "0"]
    )
    with pytest.raises(ValueError, match="multiples of 32, at least 64, got 64x90"):
        ort(_pictures([(64, 90)])[0])
    with pytest.raises(ValueError, match="multiples of 32, at least 64, got 40x64"):
        ort.model.network(torch.zeros(1, 3, 40, 64))
    # one block: the coarsest feature map would be 1x1, a size the traced program excludes
    with pytest.raises(ValueError, match="multiples of 32, at least 64, got 32x64"):
        ort.model.network(torch.zeros(1, 3, 32, 64))


def test_export_without_the_compiled_op_names_the_attention_module(
    tiny_predictors, monkeypatch, tmp_path
):
    import mask2former.export.exporter as exporter

    pytorch, _ = tiny_predictors
    monkeypatch.setattr(exporter, "kernel_available", lambda *args: False)
    with pytest.raises(
        ExportError,
        match=r"pixel_decoder\.transformer\.encoder\.layers\.0\.self_attn \(MSDeformAttn\)",
    ):
        export(pytorch.model, pytorch.cfg, str(tmp_path / "model.onnx"))


class _DataDependentGate(torch.nn.Module):
    """Runs its module only on bright images: control flow on values cannot be exported."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, images):
        if images.mean() > 0:
            return self.module(images)
        return self.module(images * 0)


def test_untraceable_module_is_named(tiny, tmp_path):
    torch.manual_seed(0)
    model = Predictor(CONFIG, tiny["weights"]).model
    model.backbone = _DataDependentGate(model.backbone)
    with pytest.raises(ExportError, match=r"backbone \(_DataDependentGate\) blocks the export"):
        export(model, load_config(CONFIG), str(tmp_path / "model.pt2"), "exported-program")


def test_missing_dependencies_are_named(tiny, tiny_predictors, monkeypatch, tmp_path):
    pytorch, _ = tiny_predictors
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match="pip install onnx onnxruntime onnxscript"):
        Predictor(tiny["onnx"], backend="onnxruntime")
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(MissingDependencyError, match="exporting to ONNX needs the 'onnxscript'"):
        export(pytorch.model, pytorch.cfg, str(tmp_path / "model.onnx"))


def test_package_imports_and_predicts_without_the_onnx_packages():
    code = (
        "import sys\n"
        "for name in ('onnx', 'onnxruntime', 'onnxscript'):\n"
        "    sys.modules[name] = None\n"
        "import mask2former.export, mask2former.apps.cli\n"
        "from mask2former import Predictor\n"
        f"Predictor({CONFIG!r}, '')\n"
    )
    run_python(code)


@pytest.mark.slow
def test_weights_as_external_data(tiny_predictors, tmp_path):
    pytorch, _ = tiny_predictors
    path = str(tmp_path / "model.onnx")
    result = export(pytorch.model, pytorch.cfg, path, external_data=True)
    assert len(result.paths) == 2 and result.paths[0] == path
    assert os.path.getsize(result.paths[1]) > os.path.getsize(path)
    ort = Predictor(path, backend="onnxruntime")
    images = _images(1, 64, 64)
    with torch.no_grad():
        expected = InferenceNetwork(pytorch.model)(images)
    torch.testing.assert_close(
        ort.model.network(images)["pred_masks"], expected[1], atol=LOGIT_TOLERANCE, rtol=0
    )


def _assert_standard_onnx(path):
    model = onnx.load(path)
    nodes = list(model.graph.node) + [
        node for function in model.functions for node in function.node
    ]
    assert [node.op_type for node in nodes if node.domain not in ("", "ai.onnx")] == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "config",
    [
        "coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml",
        "coco/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml",
    ],
)
def test_official_coco_panoptic_models_export(config, tmp_path):
    cfg = shrunk_config(config)
    # every query kept, so that the panoptic results are not empty for a random model
    cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = 0.0
    cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD = 0.0
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    description = describe_model(cfg, model)
    program = trace_program(model)  # one trace for both files
    onnx_path, program_path = str(tmp_path / "model.onnx"), str(tmp_path / "model.pt2")
    export_onnx(model, description, onnx_path, program=program)  # checked by onnx.checker
    export_program(model, description, program_path, program=program)
    _assert_standard_onnx(onnx_path)
    ort = OnnxModelFile(onnx_path).build_model(cfg)
    reloaded = load_program(program_path)[0].module()
    for batch, height, width in OFFICIAL_MODEL_INPUTS:
        images = _images(batch, height, width)
        with torch.no_grad():
            expected = InferenceNetwork(model)(images)
            from_program = reloaded(images)
        actual = ort.network(images)
        torch.testing.assert_close(actual["pred_logits"], expected[0], atol=LOGIT_TOLERANCE, rtol=0)
        torch.testing.assert_close(actual["pred_masks"], expected[1], atol=LOGIT_TOLERANCE, rtol=0)
        for reference, value in zip(expected, from_program):
            torch.testing.assert_close(value, reference, atol=1e-5, rtol=0)
    inputs = [
        {"image": torch.from_numpy(p.transpose(2, 0, 1).copy()).float()}
        for p in _pictures([(64, 90), (80, 64)])
    ]
    with torch.no_grad():
        expected, actual = model(inputs), ort(inputs)
    for reference, value in zip(expected, actual):
        assert torch.equal(reference["panoptic_seg"][0], value["panoptic_seg"][0])
        assert reference["panoptic_seg"][1] == value["panoptic_seg"][1]
        assert len(reference["panoptic_seg"][1]) > 0
        assert torch.equal(reference["instances"].pred_masks, value["instances"].pred_masks)
        assert torch.equal(reference["instances"].pred_classes, value["instances"].pred_classes)
        torch.testing.assert_close(reference["sem_seg"], value["sem_seg"], atol=1e-5, rtol=0)
