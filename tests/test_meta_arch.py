"""MaskFormer meta-architecture: train step and inference, with a fake head and the real one."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY, build_model
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import BitMasks, Instances
from helpers import shrunk_config
from torch import nn

import mask2former.modeling  # noqa: F401  (registers MaskFormer and its head)
from mask2former.config import add_maskformer2_config
from mask2former.modeling.meta_arch.mask_former import CPU_CHANNELS_LAST_MIN_PIXELS
from mask2former.modeling.pixel_decoder.ops import kernel_available

SHAPES_CONFIG = "configs/shapes/maskformer2_R18_panoptic.yaml"
DATASET = "mask2former_test_meta_arch"
NUM_CLASSES = 5
THINGS = {0, 1, 2}
MetadataCatalog.get(DATASET).set(
    thing_dataset_id_to_contiguous_id={10 + k: k for k in THINGS},
    stuff_dataset_id_to_contiguous_id={20 + k: k for k in range(NUM_CLASSES)},
)


@SEM_SEG_HEADS_REGISTRY.register()
class FakeMaskFormerHead(nn.Module):
    """Smallest head with the MaskFormerHead contract: query refinement, dot-product masks."""

    def __init__(self, cfg, input_shape):
        super().__init__()
        dim = 16
        num_queries = cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES
        self.mask_features = nn.Conv2d(input_shape["res2"].channels, dim, 1)
        self.queries = nn.Embedding(num_queries, dim)
        self.layers = nn.ModuleList(
            nn.Linear(dim, dim) for _ in range(cfg.MODEL.MASK_FORMER.DEC_LAYERS)
        )
        self.class_embed = nn.Linear(dim, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES + 1)

    def forward(self, features):
        mask_features = self.mask_features(features["res2"])
        queries = self.queries.weight[None].expand(len(mask_features), -1, -1)
        predictions = []
        for layer in self.layers:
            queries = queries + layer(queries).relu()
            masks = torch.einsum("nqc,nchw->nqhw", queries, mask_features)
            predictions.append({"pred_logits": self.class_embed(queries), "pred_masks": masks})
        return {**predictions[-1], "aux_outputs": predictions[:-1]}


def _cfg(head_name):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.merge_from_file(SHAPES_CONFIG)
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.TRAIN = (DATASET,)
    cfg.MODEL.SEM_SEG_HEAD.NAME = head_name
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 8
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 3
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 64
    cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = 0.0
    cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = 10
    if head_name == "FakeMaskFormerHead":
        # The fake head reads res2 only: the backbone stops there.
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res2"]
        cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2"]
    return cfg


def _training_inputs():
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(3, 60, 70, dtype=torch.bool)
    masks[0, 5:30, 10:40] = True
    masks[1, 30:, :] = True
    masks[2, :20, 50:] = True
    with_objects = Instances((60, 70), gt_classes=torch.tensor([0, 3, 1]), gt_masks=BitMasks(masks))
    empty = Instances(
        (64, 52), gt_classes=torch.zeros(0, dtype=torch.int64), gt_masks=torch.zeros(0, 64, 52)
    )
    return [
        {
            "image": torch.randint(0, 256, (3, 60, 70), generator=generator).float(),
            "instances": with_objects,
        },
        {
            "image": torch.randint(0, 256, (3, 64, 52), generator=generator).float(),
            "instances": empty,
        },
    ]


def _eval_inputs():
    generator = torch.Generator().manual_seed(1)
    return [
        {
            "image": torch.randint(0, 256, (3, 64, 80), generator=generator).float(),
            "height": 90,
            "width": 111,
        },
        {"image": torch.randint(0, 256, (3, 50, 66), generator=generator).float()},
    ]


def _check_train_step(model, autocast_dtype=None):
    model.train()
    with torch.autocast(
        "cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
    ):
        losses = model(_training_inputs())
    suffixes = ["", "_0", "_1"]
    assert set(losses) == {
        f"{n}{s}" for n in ("loss_ce", "loss_mask", "loss_dice") for s in suffixes
    }
    for name, value in losses.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name
    model.zero_grad()
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing}"


def _check_inference(model, autocast_dtype=None):
    model.eval()
    with (
        torch.no_grad(),
        torch.autocast(
            "cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
        ),
    ):
        results = model(_eval_inputs())
    for result, size in zip(results, [(90, 111), (50, 66)]):
        assert set(result) == {"sem_seg", "panoptic_seg", "instances"}
        assert result["sem_seg"].shape == (NUM_CLASSES, *size)
        assert result["sem_seg"].dtype == torch.float32
        panoptic_seg, segments_info = result["panoptic_seg"]
        assert panoptic_seg.shape == size and panoptic_seg.dtype == torch.int32
        assert {s["id"] for s in segments_info} == set(panoptic_seg.unique().tolist()) - {0}
        instances = result["instances"]
        assert instances.image_size == size
        assert instances.pred_masks.shape[1:] == size
        assert instances.scores.dtype == torch.float32
        assert set(instances.pred_classes.tolist()) <= THINGS
        boxes = instances.pred_boxes.tensor
        assert (boxes[:, 2:] >= boxes[:, :2]).all()
        assert (boxes[instances.pred_masks.flatten(1).any(1)].sum(1) > 0).all()
    return results


@pytest.fixture(scope="module")
def fake_model():
    torch.manual_seed(0)
    return build_model(_cfg("FakeMaskFormerHead"))


def test_train_step_with_fake_head(fake_model):
    _check_train_step(fake_model)


def test_train_step_under_bf16_autocast(fake_model):
    _check_train_step(fake_model, torch.bfloat16)


def test_inference_with_fake_head(fake_model):
    _check_inference(fake_model)
    _check_inference(fake_model, torch.bfloat16)


def test_semantic_off_gives_the_same_panoptic_and_instances(fake_model):
    fake_model.eval()
    with torch.no_grad():
        full = fake_model(_eval_inputs())
        fake_model.semantic_on = False
        try:
            partial = fake_model(_eval_inputs())
        finally:
            fake_model.semantic_on = True
    for a, b in zip(full, partial):
        assert "sem_seg" not in b
        assert torch.equal(a["panoptic_seg"][0], b["panoptic_seg"][0])
        assert a["panoptic_seg"][1] == b["panoptic_seg"][1]
        assert torch.equal(a["instances"].pred_masks, b["instances"].pred_masks)
        torch.testing.assert_close(a["instances"].scores, b["instances"].scores)


def test_semantic_only_resizes_after_inference():
    torch.manual_seed(0)
    cfg = _cfg("FakeMaskFormerHead")
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = False
    model = build_model(cfg).eval()
    assert not model.sem_seg_postprocess_before_inference
    inputs = _eval_inputs()
    with torch.no_grad():
        results = model(inputs)
        images = model.preprocess_image(inputs)
        outputs = model.sem_seg_head(model.backbone(images.tensor))
    # The official order: upsample to the padded size, infer, crop and resize the result.
    masks = F.interpolate(outputs["pred_masks"], size=images.tensor.shape[-2:], mode="bilinear")
    for index, (result, image_size) in enumerate(zip(results, images.image_sizes)):
        assert set(result) == {"sem_seg"}
        class_probs = outputs["pred_logits"][index].softmax(-1)[:, :-1]
        semantic = torch.einsum("qk,qhw->khw", class_probs, masks[index].sigmoid())
        height = inputs[index].get("height", image_size[0])
        width = inputs[index].get("width", image_size[1])
        expected = sem_seg_postprocess(semantic, image_size, height, width)
        torch.testing.assert_close(result["sem_seg"], expected, atol=1e-5, rtol=1e-5)


def test_real_head_end_to_end():
    torch.manual_seed(0)
    model = build_model(_cfg("MaskFormerHead"))
    assert "criterion.empty_weight" in model.state_dict()
    assert not any(k.startswith("pixel_mean") for k in model.state_dict())
    _check_train_step(model)
    _check_inference(model)
    _check_inference(model, torch.bfloat16)


def test_inference_with_gradients_enabled(fake_model):
    fake_model.eval()
    result = fake_model(_eval_inputs()[:1])[0]
    assert result["sem_seg"].shape == (NUM_CLASSES, 90, 111)
    result["sem_seg"].sum().backward()
    assert fake_model.sem_seg_head.class_embed.weight.grad is not None


def _flat_outputs(outputs):
    """The head's dict as a flat {name: tensor}, aux_outputs' layers included."""
    flat = {name: outputs[name] for name in ("pred_logits", "pred_masks")}
    for layer, aux in enumerate(outputs["aux_outputs"]):
        flat.update({f"aux_outputs[{layer}].{name}": tensor for name, tensor in aux.items()})
    return flat


R50_COCO_PANOPTIC = "coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml"


@pytest.mark.skipif(
    not kernel_available("cpu"), reason="the PyTorch reference op reads the level sizes back"
)
@pytest.mark.parametrize(
    "config, training, autocast",
    [
        (R50_COCO_PANOPTIC, False, None),
        (R50_COCO_PANOPTIC, True, None),
        (R50_COCO_PANOPTIC, False, torch.bfloat16),
        ("coco/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml", False, None),
    ],
)
def test_network_compiles_to_one_graph(config, training, autocast):
    """torch.compile(model.network, fullgraph=True) traces backbone, pixel decoder (through the
    deformable attention op's fake implementation) and transformer decoder as one graph, also
    under autocast: a graph break fails here with its reason. One graph is what
    mode="reduce-overhead" replays as CUDA graphs. The compiled network gives the eager
    outputs and, in training, gradients."""
    torch.manual_seed(0)
    model = build_model(shrunk_config(config)).train(training)
    images = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    compiled = torch.compile(model.network, fullgraph=True, backend="aot_eager")
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    parameters = [p for _, p in named]
    results = []
    for network in (model.network, compiled):
        with (
            torch.set_grad_enabled(training),
            torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None),
        ):
            outputs = _flat_outputs(network(images))
        gradients = []
        if training:
            loss = sum(tensor.float().square().mean() for tensor in outputs.values())
            gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
        results.append((outputs, gradients))
    (eager, eager_gradients), (traced, traced_gradients) = results
    assert list(traced) == list(eager)
    # training: the final prediction and DEC_LAYERS - 1 = 2 auxiliary ones; eval: no aux
    assert len(eager) == (6 if training else 2)
    for name in eager:
        torch.testing.assert_close(traced[name], eager[name], rtol=1e-5, atol=1e-5, msg=name)
    for (name, _), expected, actual in zip(named, eager_gradients, traced_gradients):
        assert (expected is None) == (actual is None), name
        if expected is not None:
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-6, msg=name)


def _backbone_layouts(model, images):
    """Whether each backbone forward of ``model.network(images)`` got channels-last images,
    and the network's outputs."""
    layouts = []
    channels_last = torch.channels_last
    handle = model.backbone.register_forward_pre_hook(
        lambda module, args: layouts.append(args[0].is_contiguous(memory_format=channels_last))
    )
    try:
        outputs = model.network(images)
    finally:
        handle.remove()
    return layouts, outputs


def test_resnet_backbone_runs_channels_last_on_the_cpu_from_a_size():
    """Eval-mode ResNet on the CPU: channels-last images from CPU_CHANNELS_LAST_MIN_PIXELS on
    (faster with oneDNN), the same outputs up to float rounding; smaller images, training and
    cpu_channels_last=False keep the default layout."""
    torch.manual_seed(0)
    model = build_model(shrunk_config(R50_COCO_PANOPTIC)).eval()
    assert model.cpu_channels_last
    side = int(CPU_CHANNELS_LAST_MIN_PIXELS**0.5)
    images = torch.randn(1, 3, side, side)
    with torch.no_grad():
        layouts, channels_last = _backbone_layouts(model, images)
        assert layouts == [True]
        assert channels_last["pred_masks"].is_contiguous()  # the head's outputs as before
        model.cpu_channels_last = False
        layouts, default = _backbone_layouts(model, images)
        assert layouts == [False]
        for name in ("pred_logits", "pred_masks"):
            torch.testing.assert_close(channels_last[name], default[name], rtol=1e-4, atol=1e-5)
        model.cpu_channels_last = True
        layouts, _ = _backbone_layouts(model, images[..., : side - 32])  # under the size
        assert layouts == [False]
    model.train()
    assert model.backbone_input(images) is images


def test_swin_backbone_keeps_the_default_layout():
    """Channels-last does not speed up Swin's patch embedding and windows (BENCHMARKS.md)."""
    torch.manual_seed(0)
    config = "cityscapes/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_90k.yaml"
    model = build_model(shrunk_config(config)).eval()
    images = torch.randn(1, 3, 256, 256)
    assert not model.cpu_channels_last and model.backbone_input(images) is images
