"""Unit tests of mask2former.engine: optimizer groups, gradient clipping, evaluator selection,
atomic checkpoints and semantic test-time augmentation."""

import importlib.machinery
import logging
import os
import subprocess
import sys
import types

import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.data.transforms import HFlipTransform, NoOpTransform, TransformList
from detectron2.evaluation import (
    CityscapesSemSegEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
)
from detectron2.utils.events import EventStorage
from torch import nn

import mask2former.data  # noqa: F401  only registration
from mask2former.config import load_config
from mask2former.data.datasets import panoptic_category_metadata, register_coco_panoptic_with_checks
from mask2former.data.datasets.catalog_utils import get_datasets_root
from mask2former.data.synthetic import (
    SHAPES_CATEGORIES,
    SyntheticConfig,
    ensure_synthetic_dataset,
    synthetic_split_paths,
)
from mask2former.engine import (
    OUTPUT_FLAGS,
    AtomicDetectionCheckpointer,
    EvaluationDependencyError,
    InstanceSegEvaluator,
    MaskFormerTrainer,
    SemanticSegmentorWithTTA,
    add_full_model_gradient_clipping,
    build_evaluator,
    build_optimizer,
    build_train_loop,
    check_evaluation_dependencies,
)
from mask2former.engine import evaluation as evaluation_module
from mask2former.engine import optimizer as optimizer_module
from mask2former.engine.evaluation import SemSegEvaluatorWithConfusion
from mask2former.engine.partial_evaluation import (
    PartialCOCOEvaluator,
    PartialCOCOPanopticEvaluator,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES_PANOPTIC = os.path.join(REPO, "configs/shapes/maskformer2_R18_panoptic.yaml")


def _cfg(*opts):
    return load_config(SHAPES_PANOPTIC, ["MODEL.DEVICE", "cpu", *opts])


class _ToyModel(nn.Module):
    """A backbone and a head with every kind of parameter the optimizer treats specially."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.backbone.relative_position_bias_table = nn.Parameter(torch.zeros(5, 2))
        self.head = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.GroupNorm(2, 4))
        self.query_feat = nn.Embedding(3, 4)


def _hyperparams_by_param(optimizer):
    found = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert id(p) not in found, "a parameter is in two groups"
            found[id(p)] = (group["lr"], group["weight_decay"])
    return found


@pytest.mark.parametrize("name", ["ADAMW", "SGD"])
def test_optimizer_groups(name):
    cfg = _cfg(
        "SOLVER.OPTIMIZER", name,
        "SOLVER.BASE_LR", "0.001",
        "SOLVER.BACKBONE_MULTIPLIER", "0.1",
        "SOLVER.WEIGHT_DECAY", "0.05",
        "SOLVER.WEIGHT_DECAY_NORM", "0.0",
        "SOLVER.WEIGHT_DECAY_EMBED", "0.0",
    )  # fmt: skip
    model = _ToyModel()
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, {"ADAMW": torch.optim.AdamW, "SGD": torch.optim.SGD}[name])
    found = _hyperparams_by_param(optimizer)
    assert len(found) == len(list(model.parameters()))
    expected = {
        model.backbone[0].weight: (1e-4, 0.05),
        model.backbone[0].bias: (1e-4, 0.05),
        model.backbone[1].weight: (1e-4, 0.0),  # norm
        model.backbone[1].bias: (1e-4, 0.0),
        model.backbone.relative_position_bias_table: (1e-4, 0.0),  # embedding, in the backbone
        model.head[0].weight: (1e-3, 0.05),
        model.head[1].weight: (1e-3, 0.0),  # LayerNorm
        model.head[2].bias: (1e-3, 0.0),  # GroupNorm
        model.query_feat.weight: (1e-3, 0.0),  # nn.Embedding
    }
    for param, (lr, weight_decay) in expected.items():
        assert found[id(param)] == pytest.approx((lr, weight_decay))


def test_registered_optimizer_is_used_and_unknown_one_is_named(monkeypatch):
    """SOLVER.OPTIMIZER picks any optimizer registered in OPTIMIZER_REGISTRY, with the same
    parameter groups and clipping as the built-in ones; an unknown name lists the known ones."""
    registry = optimizer_module.OPTIMIZER_REGISTRY
    # a copy of the registry's table, so the test's registration does not outlive it
    monkeypatch.setattr(registry, "_obj_map", dict(registry._obj_map))

    @registry.register()
    def RMSPROP(cfg):
        return torch.optim.RMSprop, {"alpha": 0.9}

    cfg = _cfg(
        "SOLVER.OPTIMIZER", "RMSPROP",
        "SOLVER.BASE_LR", "0.001",
        "SOLVER.BACKBONE_MULTIPLIER", "0.1",
        "SOLVER.CLIP_GRADIENTS.ENABLED", "True",
    )  # fmt: skip
    model = _ToyModel()
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.RMSprop)
    assert {group["alpha"] for group in optimizer.param_groups} == {0.9}
    assert found_lr(optimizer, model.backbone[0].weight) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match=r"'NADAM'.*\['ADAMW', 'RMSPROP', 'SGD'\]"):
        build_optimizer(_cfg("SOLVER.OPTIMIZER", "NADAM"), model)


def found_lr(optimizer, param) -> float:
    return _hyperparams_by_param(optimizer)[id(param)][0]


def test_optimizer_groups_of_the_real_model():
    from detectron2.modeling import build_model

    cfg = _cfg("SOLVER.WEIGHT_DECAY_EMBED", "0.0", "SOLVER.BACKBONE_MULTIPLIER", "0.5")
    model = build_model(cfg)
    found = _hyperparams_by_param(build_optimizer(cfg, model))
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    assert embeddings, "the decoder should have learnable query / level embeddings"
    for module in embeddings:
        assert found[id(module.weight)][1] == 0.0
    for name, param in model.named_parameters():
        lr = found[id(param)][0]
        factor = 0.5 if name.startswith("backbone.") else 1.0
        assert lr == pytest.approx(cfg.SOLVER.BASE_LR * factor), name


@pytest.mark.parametrize(
    "amp, precision, fused",
    [("False", "float16", True), ("True", "bfloat16", True), ("True", "float16", False)],
)
def test_adamw_is_fused_unless_gradients_are_scaled(amp, precision, fused):
    cfg = _cfg(
        "SOLVER.AMP.ENABLED", amp, "SOLVER.AMP.PRECISION", precision,
        "SOLVER.CLIP_GRADIENTS.ENABLED", "False",  # compared with plain AdamW below
    )  # fmt: skip
    torch.manual_seed(0)
    model = _ToyModel()
    optimizer = build_optimizer(cfg, model)
    assert bool(optimizer.defaults["fused"]) is fused
    # and the fused step is AdamW's step
    reference_model = _ToyModel()
    reference_model.load_state_dict(model.state_dict())
    reference = torch.optim.AdamW(
        [{**g, "params": [dict(reference_model.named_parameters())[n] for n in names]}
         for g, names in _group_names(optimizer, model)],
        lr=cfg.SOLVER.BASE_LR,
    )  # fmt: skip
    for _ in range(3):
        for net in (model, reference_model):
            torch.manual_seed(1)
            for p in net.parameters():
                p.grad = torch.randn_like(p)
        optimizer.step()
        reference.step()
    for (name, p), q in zip(model.named_parameters(), reference_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def _group_names(optimizer, model):
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        settings = {k: v for k, v in group.items() if k in ("lr", "weight_decay")}
        yield settings, [names[id(p)] for p in group["params"]]


def _sgd_step(optimizer_type, grads, **kwargs):
    params = [nn.Parameter(torch.zeros_like(g)) for g in grads]
    optimizer = optimizer_type(params, lr=1.0, **kwargs)
    for p, g in zip(params, grads):
        p.grad = g.clone()
    optimizer.step()
    return [p.detach() for p in params]


def test_full_model_clipping_clips_the_global_norm():
    grads = [torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])]  # global norm 5, each <= 4
    clipped_sgd = add_full_model_gradient_clipping(torch.optim.SGD, max_norm=1.0)
    assert issubclass(clipped_sgd, torch.optim.SGD)
    new = _sgd_step(clipped_sgd, grads)
    # every gradient scaled by 1/5 (per-parameter clipping would give -0.75 and -1.0)
    assert torch.allclose(new[0], torch.tensor([-0.6, 0.0]))
    assert torch.allclose(new[1], torch.tensor([0.0, -0.8]))
    # below the limit nothing changes
    new = _sgd_step(add_full_model_gradient_clipping(torch.optim.SGD, max_norm=10.0), grads)
    assert torch.allclose(new[1], -grads[1])


def test_config_selects_full_model_clipping():
    model = _ToyModel()
    for p in model.parameters():
        p.grad = torch.full_like(p, 10.0)
    cfg = _cfg(
        "SOLVER.OPTIMIZER", "SGD", "SOLVER.MOMENTUM", "0.0", "SOLVER.BASE_LR", "1.0",
        "SOLVER.BACKBONE_MULTIPLIER", "1.0", "SOLVER.WEIGHT_DECAY", "0.0",
        "SOLVER.WEIGHT_DECAY_NORM", "0.0", "SOLVER.WEIGHT_DECAY_EMBED", "0.0",
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.01",
    )  # fmt: skip
    before = [p.detach().clone() for p in model.parameters()]
    build_optimizer(cfg, model).step()
    change = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert change.norm().item() == pytest.approx(0.01, rel=1e-4)


def _evaluator_types(evaluator):
    parts = evaluator._evaluators if isinstance(evaluator, DatasetEvaluators) else [evaluator]
    return sorted(type(e).__name__ for e in parts)


def _skip_messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == evaluation_module.__name__]


@pytest.fixture
def registered_shapes():
    """The registered shapes_* data sets' files (COCOEvaluator reads its JSON when built)."""
    ensure_synthetic_dataset(os.path.join(get_datasets_root(), "shapes"))


def test_evaluators_by_evaluator_type(registered_shapes, tmp_path, caplog, monkeypatch):
    out = str(tmp_path)
    cfg = _cfg()  # semantic, instance and panoptic outputs on
    assert _evaluator_types(build_evaluator(cfg, "shapes_val_panoptic", out)) == sorted(
        [
            PartialCOCOPanopticEvaluator.__name__,
            PartialCOCOEvaluator.__name__,
            SemSegEvaluatorWithConfusion.__name__,
        ]
    )
    without_instances = _cfg("MODEL.MASK_FORMER.TEST.INSTANCE_ON", "False")
    assert _evaluator_types(build_evaluator(without_instances, "shapes_val_panoptic", out)) == (
        sorted([PartialCOCOPanopticEvaluator.__name__, SemSegEvaluatorWithConfusion.__name__])
    )
    MetadataCatalog.get("test_engine_cityscapes_sem").set(evaluator_type="cityscapes_sem_seg")
    # the Cityscapes scripts are an optional package: as if installed
    cityscapes_scripts = types.ModuleType("cityscapesscripts")
    cityscapes_scripts.__spec__ = importlib.machinery.ModuleSpec("cityscapesscripts", None)
    monkeypatch.setitem(sys.modules, "cityscapesscripts", cityscapes_scripts)
    with caplog.at_level(logging.WARNING, logger=evaluation_module.__name__):
        assert _evaluator_types(build_evaluator(cfg, "shapes_val", out)) == [
            PartialCOCOEvaluator.__name__
        ]
        assert _evaluator_types(build_evaluator(cfg, "shapes_val_sem_seg", out)) == [
            SemSegEvaluatorWithConfusion.__name__
        ]
        assert _evaluator_types(build_evaluator(cfg, "test_engine_cityscapes_sem", out)) == [
            CityscapesSemSegEvaluator.__name__
        ]
    # one line per data set, naming the outputs that are on but have no ground truth there
    expected = {
        "shapes_val": {"SEMANTIC_ON", "PANOPTIC_ON"},
        "shapes_val_sem_seg": {"INSTANCE_ON", "PANOPTIC_ON"},
        "test_engine_cityscapes_sem": {"INSTANCE_ON", "PANOPTIC_ON"},
    }
    skipped = _skip_messages(caplog)
    assert len(skipped) == len(expected)
    for message, (data_set, flags) in zip(skipped, expected.items()):
        assert repr(data_set) in message
        assert {flag for flag in OUTPUT_FLAGS if flag in message} == flags
    # the data set's only output is off: nothing to evaluate
    with pytest.raises(ValueError, match="INSTANCE_ON"):
        build_evaluator(without_instances, "shapes_val", out)
    MetadataCatalog.get("test_engine_unknown").set(evaluator_type="no_such_type")
    with pytest.raises(NotImplementedError, match="test_engine_unknown"):
        build_evaluator(cfg, "test_engine_unknown", out)


def test_evaluator_packages_are_checked_before_any_work(tmp_path, monkeypatch):
    """The Cityscapes and LVIS evaluators import packages this project does not install: a
    missing one stops training or evaluation at the start, saying what to install, instead of
    after all the inference."""
    monkeypatch.setitem(sys.modules, "cityscapesscripts", None)  # not installed
    monkeypatch.setitem(sys.modules, "lvis", None)
    cfg = _cfg("DATASETS.TEST", "('shapes_val_panoptic', 'cityscapes_fine_instance_seg_val')")
    with pytest.raises(EvaluationDependencyError) as error:
        check_evaluation_dependencies(cfg)
    message = str(error.value)
    assert "'cityscapes_fine_instance_seg_val'" in message and "instance output" in message
    assert "pip install cityscapesscripts" in message and "INSTANCE_ON False" in message
    with pytest.raises(EvaluationDependencyError, match="pip install cityscapesscripts"):
        MaskFormerTrainer(cfg)  # before the model, the data or any iteration
    with pytest.raises(EvaluationDependencyError, match="pip install lvis"):
        build_evaluator(_cfg(), "lvis_v1_val", str(tmp_path))
    # with the outputs that need the scripts turned off, Cityscapes panoptic needs nothing
    check_evaluation_dependencies(
        _cfg(
            "DATASETS.TEST",
            "('cityscapes_fine_panoptic_val',)",
            "MODEL.MASK_FORMER.TEST.INSTANCE_ON",
            "False",
            "MODEL.MASK_FORMER.TEST.SEMANTIC_ON",
            "False",
        )  # fmt: skip
    )


def test_train_net_names_a_missing_evaluator_package_before_starting(tmp_path):
    config = os.path.join(
        REPO, "configs/cityscapes/instance-segmentation/maskformer2_R50_bs16_90k.yaml"
    )
    weights = tmp_path / "model_final.pth"
    weights.write_bytes(b"")
    code = (
        "import runpy, sys\n"
        "sys.modules['cityscapesscripts'] = None\n"  # not installed, wherever this runs
        f"sys.argv = ['train_net.py', '--config-file', {config!r}, '--eval-only', "
        f"'MODEL.WEIGHTS', {str(weights)!r}]\n"
        "runpy.run_path('train_net.py', run_name='__main__')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1, result.stderr
    assert "error: Evaluating the instance output" in result.stderr
    assert "pip install cityscapesscripts" in result.stderr
    assert "Traceback" not in result.stderr


def test_registered_evaluator_type_is_evaluated(tmp_path, monkeypatch):
    """A data set whose evaluator_type is registered in EVALUATOR_REGISTRY gets that
    registration's evaluators, with the same output flags as the built-in types."""
    registry = evaluation_module.EVALUATOR_REGISTRY
    monkeypatch.setattr(registry, "_obj_map", dict(registry._obj_map))
    built = []

    class MyEvaluator(DatasetEvaluator):
        pass

    def build_semantic(cfg, dataset_name, output_folder):
        built.append((dataset_name, output_folder))
        return [MyEvaluator()]

    @registry.register()
    def my_sem_seg():
        return (evaluation_module.OutputEvaluation("SEMANTIC_ON", build_semantic),)

    name = "test_engine_my_sem_seg"
    MetadataCatalog.get(name).set(evaluator_type="my_sem_seg")
    evaluator = build_evaluator(_cfg(), name, str(tmp_path))
    assert isinstance(evaluator, MyEvaluator) and built == [(name, str(tmp_path))]
    with pytest.raises(ValueError, match="SEMANTIC_ON"):
        build_evaluator(_cfg("MODEL.MASK_FORMER.TEST.SEMANTIC_ON", "False"), name, str(tmp_path))


def test_panoptic_data_set_without_semantic_or_instance_files(tmp_path, caplog):
    """A COCO panoptic data set registered without semantic PNGs or an instance JSON gets
    panoptic evaluation only, and one line saying semantic and instance were skipped."""
    paths = synthetic_split_paths(
        ensure_synthetic_dataset(str(tmp_path / "shapes"), SyntheticConfig(2, 2, size=32)), "val"
    )
    name = "test_engine_panoptic_only"
    register_coco_panoptic_with_checks(
        name,
        panoptic_category_metadata(SHAPES_CATEGORIES),
        paths["image_root"],
        paths["panoptic_root"],
        paths["panoptic_json"],
    )
    with caplog.at_level(logging.WARNING, logger=evaluation_module.__name__):
        evaluator = build_evaluator(_cfg(), name, str(tmp_path / "out"))
    assert isinstance(evaluator, COCOPanopticEvaluator)
    (message,) = _skip_messages(caplog)
    assert repr(name) in message and "SEMANTIC_ON" in message and "INSTANCE_ON" in message
    assert "PANOPTIC_ON" not in message


def test_ade20k_style_instance_evaluator_maps_interleaved_thing_ids(registered_shapes, tmp_path):
    # things interleaved with stuff: dataset ids 1..4 at contiguous 0, 2, 4, 5 of 7 classes
    source = MetadataCatalog.get("shapes_val_panoptic")
    name = "test_engine_interleaved"
    MetadataCatalog.get(name).set(
        json_file=source.json_file,
        evaluator_type="ade20k_panoptic_seg",
        thing_classes=source.thing_classes,
        thing_dataset_id_to_contiguous_id={1: 0, 2: 2, 3: 4, 4: 5},
    )
    cfg = _cfg(
        "MODEL.MASK_FORMER.TEST.PANOPTIC_ON", "False", "MODEL.MASK_FORMER.TEST.SEMANTIC_ON", "False"
    )
    instance_evaluator = build_evaluator(cfg, name, str(tmp_path))
    assert isinstance(instance_evaluator, InstanceSegEvaluator)
    instance_evaluator.reset()
    from detectron2.structures import Boxes, Instances

    instances = Instances((8, 8))
    instances.pred_classes = torch.tensor([2, 1, 5])  # 1 is a stuff class
    instances.scores = torch.tensor([0.9, 0.8, 0.7])
    instances.pred_masks = torch.ones(3, 8, 8, dtype=torch.bool)
    instances.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 3))
    instance_evaluator.process([{"image_id": 0}], [{"instances": instances}])
    (prediction,) = instance_evaluator._predictions
    ranks = [x["category_id"] for x in prediction["instances"]]
    assert ranks == [1, 3]
    # COCOEvaluator maps ranks back through the (replaced) metadata: to dataset ids 2 and 4
    mapping = instance_evaluator._metadata.thing_dataset_id_to_contiguous_id
    rank_to_dataset_id = {rank: dataset_id for dataset_id, rank in mapping.items()}
    assert [rank_to_dataset_id[r] for r in ranks] == [2, 4]


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)


def test_checkpoint_is_atomic_when_the_save_crashes(tmp_path, monkeypatch):
    model = _Tiny()
    checkpointer = AtomicDetectionCheckpointer(model, str(tmp_path))
    checkpointer.save("model_final")
    good_bytes = (tmp_path / "model_final.pth").read_bytes()

    def crash_midway(data, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed while saving")

    with torch.no_grad():
        model.linear.weight.fill_(1.0)
    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_final")
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0009")
    monkeypatch.undo()

    assert (tmp_path / "model_final.pth").read_bytes() == good_bytes
    assert not (tmp_path / "model_0009.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]
    restored = _Tiny()
    AtomicDetectionCheckpointer(restored, str(tmp_path)).resume_or_load("", resume=True)
    assert not torch.equal(restored.linear.weight, model.linear.weight)


def test_checkpoint_round_trip(tmp_path):
    model = _Tiny()
    AtomicDetectionCheckpointer(model, str(tmp_path)).save("model_0001", iteration=1)
    restored = _Tiny()
    data = AtomicDetectionCheckpointer(restored, str(tmp_path)).resume_or_load("", resume=True)
    assert data["iteration"] == 1
    assert torch.equal(restored.linear.weight, model.linear.weight)


class _EquivariantSegmentor(nn.Module):
    """Class probabilities = (image's red channel, 255 - red), resized to height x width."""

    def forward(self, batched_inputs):
        outputs = []
        for x in batched_inputs:
            red = x["image"][:1].float()[None]
            red = nn.functional.interpolate(red, size=(x["height"], x["width"]), mode="bilinear")
            outputs.append({"sem_seg": torch.cat([red[0], 255 - red[0]])})
        return outputs


class _FlipMapper:
    def __call__(self, dataset_dict):
        flipped = dict(dataset_dict, image=dataset_dict["image"].flip(dims=[2]))
        flip = TransformList([HFlipTransform(dataset_dict["image"].shape[2])])
        return [
            dict(dataset_dict, transforms=TransformList([NoOpTransform()])),
            dict(flipped, transforms=flip),
        ]


def test_tta_undoes_the_flip():
    image = torch.arange(3 * 6 * 10, dtype=torch.float32).reshape(3, 6, 10) % 255
    inputs = {"image": image, "height": 6, "width": 10}
    model = _EquivariantSegmentor()
    plain = model([inputs])[0]["sem_seg"]
    tta = SemanticSegmentorWithTTA(_cfg(), model, tta_mapper=_FlipMapper(), batch_size=2)
    (output,) = tta([inputs])
    assert torch.allclose(output["sem_seg"], plain)
    assert not torch.allclose(plain, plain.flip(dims=[2]))


def test_tta_multi_scale_from_config():
    cfg = _cfg("TEST.AUG.MIN_SIZES", "(6, 12)", "TEST.AUG.MAX_SIZE", "100", "TEST.AUG.FLIP", "True")
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 255, (3, 6, 10), generator=generator).to(torch.uint8)
    inputs = {"image": image, "height": 6, "width": 10}
    seen = []

    class _Recorder(_EquivariantSegmentor):
        def forward(self, batched_inputs):
            seen.extend(tuple(x["image"].shape[1:]) for x in batched_inputs)
            return super().forward(batched_inputs)

    (output,) = SemanticSegmentorWithTTA(cfg, _Recorder())([inputs])
    assert sorted(seen) == [(6, 10), (6, 10), (12, 20), (12, 20)]
    assert output["sem_seg"].shape == (2, 6, 10)


def _loop_for(cfg, device):
    from detectron2.engine import AMPTrainer, SimpleTrainer

    from mask2former.engine import build_train_loop

    model = _Tiny().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loop = build_train_loop(cfg, model, [], optimizer)
    return loop, AMPTrainer, SimpleTrainer


def test_amp_float16_falls_back_to_float32_on_cpu():
    cfg = _cfg("SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", "float16")
    loop, amp_trainer, simple_trainer = _loop_for(cfg, "cpu")
    assert isinstance(loop, simple_trainer) and not isinstance(loop, amp_trainer)


class _LossModel(nn.Module):
    """Records the dtype its matmul runs in, whether gradients were cleared before its forward
    and whether its backward ran under autocast; returns a loss dict."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.seen_dtypes = []
        self.grads_cleared = []
        self.backward_under_autocast = []

    def forward(self, batch):
        self.grads_cleared.append(self.linear.weight.grad is None)
        out = self.linear(batch)
        self.seen_dtypes.append(out.dtype)
        out.register_hook(
            lambda grad: self.backward_under_autocast.append(torch.is_autocast_enabled("cpu"))
        )
        return {"loss": out.float().pow(2).mean()}


class _RecordingSGD(torch.optim.SGD):
    def step(self, closure=None):
        self.under_autocast = torch.is_autocast_enabled("cpu")
        return super().step(closure)


def test_amp_bfloat16_trains_under_cpu_autocast():
    from mask2former.engine.trainer import CPUAutocastTrainer

    cfg = _cfg("SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", "bfloat16")
    model = _LossModel()
    optimizer = _RecordingSGD(model.parameters(), lr=0.1)
    batch = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    loop = build_train_loop(cfg, model, [batch, batch], optimizer)
    assert isinstance(loop, CPUAutocastTrainer)
    before = model.linear.weight.detach().clone()
    loop.storage = EventStorage(0)
    with loop.storage:
        loop.run_step()
    assert model.seen_dtypes == [torch.bfloat16]
    assert model.backward_under_autocast == [False] and optimizer.under_autocast is False
    assert not torch.is_autocast_enabled("cpu")
    assert model.linear.weight.dtype == torch.float32
    assert torch.isfinite(model.linear.weight.grad).all()
    assert not torch.equal(model.linear.weight, before)


def test_cpu_autocast_trainer_keeps_simple_trainer_options():
    """zero_grad_before_forward and async metrics, as SimpleTrainer.run_step does them."""
    from mask2former.engine.trainer import CPUAutocastTrainer

    model = _LossModel()
    batch = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    loop = CPUAutocastTrainer(
        model,
        [batch] * 3,
        torch.optim.SGD(model.parameters(), lr=0.1),
        zero_grad_before_forward=True,
        async_write_metrics=True,
    )
    loop.storage = EventStorage(0)
    with loop.storage:
        for iteration in range(2):
            loop.iter = loop.storage.iter = iteration
            loop.run_step()
        loop.after_train()  # waits for the metrics written asynchronously
        history = loop.storage.history("total_loss")
    assert model.grads_cleared == [True, True]
    assert model.seen_dtypes == [torch.bfloat16] * 2
    assert len(history.values()) == 2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_amp_precision_from_config(precision):
    cfg = _cfg("MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True")
    cfg.SOLVER.AMP.PRECISION = precision
    loop, amp_trainer, _ = _loop_for(cfg, "cuda")
    assert isinstance(loop, amp_trainer)
    assert loop.precision == getattr(torch, precision)
    assert loop.grad_scaler.is_enabled() == (precision == "float16")
