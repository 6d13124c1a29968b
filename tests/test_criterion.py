import math

import torch
from detectron2.config import get_cfg
from torch import nn

from mask2former.config import add_maskformer2_config
from mask2former.modeling.criterion import SetCriterion
from mask2former.modeling.matcher import HungarianMatcher


class FixedMatcher(nn.Module):
    """Returns preset (query, target) indices, so the losses are hand-computable."""

    def __init__(self, indices):
        super().__init__()
        self.indices = indices

    def forward(self, outputs, targets):
        return [(torch.tensor(q), torch.tensor(t)) for q, t in self.indices]


def _criterion(matcher, num_classes=3, no_object_weight=0.1, num_points=64):
    names = ["loss_ce", "loss_mask", "loss_dice"]
    return SetCriterion(
        num_classes=num_classes,
        matcher=matcher,
        weight_dict=dict.fromkeys(names, 1.0),
        no_object_weight=no_object_weight,
        num_points=num_points,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
    )


def test_class_loss_uses_no_object_weight():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 4)
    masks = torch.randn(2, 4, 8, 8)
    targets = [
        {"labels": torch.tensor([2, 0]), "masks": torch.ones(2, 32, 32, dtype=torch.bool)},
        {"labels": torch.tensor([1]), "masks": torch.ones(1, 32, 32, dtype=torch.bool)},
    ]
    criterion = _criterion(FixedMatcher([([3, 0], [0, 1]), ([2], [0])]), no_object_weight=0.25)
    losses = criterion({"pred_logits": logits, "pred_masks": masks}, targets)
    # Classes per query by hand: image 0: q3 -> 2, q0 -> 0; image 1: q2 -> 1; others no-object (3).
    classes = torch.tensor([[0, 3, 3, 2], [3, 3, 1, 3]])
    weights = torch.where(classes == 3, 0.25, 1.0)
    nll = -logits.log_softmax(-1).gather(-1, classes[..., None])[..., 0]
    expected = (weights * nll).sum() / weights.sum()
    torch.testing.assert_close(losses["loss_ce"], expected)
    unweighted = _criterion(FixedMatcher([([3, 0], [0, 1]), ([2], [0])]), no_object_weight=1.0)
    plain = unweighted({"pred_logits": logits, "pred_masks": masks}, targets)["loss_ce"]
    torch.testing.assert_close(plain, nll.mean())


def test_constant_masks_give_hand_computed_bce_and_dice():
    # Prediction logit 0 everywhere (p = 0.5) and empty targets: every sampled point has the
    # same values (grid_sample's zero padding keeps both at 0 near the border).
    num_points = 40
    masks = torch.zeros(1, 3, 8, 8)
    targets = [{"labels": torch.tensor([0, 1]), "masks": torch.zeros(2, 32, 32, dtype=torch.bool)}]
    criterion = _criterion(FixedMatcher([([0, 2], [0, 1])]), num_points=num_points)
    losses = criterion({"pred_logits": torch.zeros(1, 3, 4), "pred_masks": masks}, targets)
    # num_masks = 2 and two matched masks: the per-mask losses.
    torch.testing.assert_close(losses["loss_mask"], torch.tensor(math.log(2)))
    dice = 1 - 1 / (0.5 * num_points + 1)
    torch.testing.assert_close(losses["loss_dice"], torch.tensor(dice))


def _mask_losses_of(pred_masks, target_masks):
    targets = [{"labels": torch.tensor([1, 0]), "masks": target_masks}]
    pred_logits = torch.full((1, 2, 3), -20.0)
    pred_logits[0, 0, 1] = 20.0
    pred_logits[0, 1, 0] = 20.0
    criterion = SetCriterion(
        num_classes=2,
        matcher=HungarianMatcher(
            class_weight=1.0, mask_weight=1.0, dice_weight=1.0, num_points=256
        ),
        weight_dict={},
        no_object_weight=0.1,
        num_points=1024,
        oversample_ratio=1.0,
        importance_sample_ratio=0.0,
    )
    return criterion({"pred_logits": pred_logits, "pred_masks": pred_masks}, targets)


def test_perfect_predictions_give_near_zero_losses():
    torch.manual_seed(0)
    target_masks = torch.zeros(2, 128, 128, dtype=torch.bool)
    target_masks[0, 1:-1, 1:64] = True
    target_masks[1, 32:96, 32:96] = True
    # Only points within a pixel of a boundary see interpolated (soft) values.
    perfect = _mask_losses_of(torch.where(target_masks, 30.0, -30.0)[None], target_masks)
    assert perfect["loss_ce"] < 1e-6
    assert perfect["loss_dice"] < 0.02
    assert perfect["loss_mask"] < 0.15
    shifted = torch.where(target_masks.roll(20, dims=-1), 30.0, -30.0)[None]
    wrong = _mask_losses_of(shifted, target_masks)
    assert wrong["loss_dice"] > 10 * perfect["loss_dice"]
    assert wrong["loss_mask"] > 10 * perfect["loss_mask"]


def test_aux_losses_get_suffixes_and_no_targets_keep_graph():
    torch.manual_seed(0)
    pred = {
        "pred_logits": torch.randn(2, 5, 4, requires_grad=True),
        "pred_masks": torch.randn(2, 5, 8, 8, requires_grad=True),
    }
    aux = [
        {
            "pred_logits": torch.randn(2, 5, 4, requires_grad=True),
            "pred_masks": torch.randn(2, 5, 8, 8, requires_grad=True),
        }
        for _ in range(2)
    ]
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32)}
    criterion = _criterion(
        HungarianMatcher(class_weight=1.0, mask_weight=1.0, dice_weight=1.0, num_points=16)
    )
    losses = criterion({**pred, "aux_outputs": aux}, [empty, empty])
    expected = {f"{n}{s}" for n in ("loss_ce", "loss_mask", "loss_dice") for s in ("", "_0", "_1")}
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"] == 0 and losses["loss_dice_1"] == 0
    sum(losses.values()).backward()
    for tensors in [pred, *aux]:
        assert tensors["pred_masks"].grad is not None
        assert tensors["pred_logits"].grad.abs().sum() > 0


def test_mixed_batch_with_an_empty_image():
    torch.manual_seed(0)
    pred = {
        "pred_logits": torch.randn(2, 5, 4, requires_grad=True),
        "pred_masks": torch.randn(2, 5, 8, 8, requires_grad=True),
    }
    targets = [
        {"labels": torch.tensor([0, 2]), "masks": torch.rand(2, 32, 32) > 0.5},
        {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32)},
    ]
    criterion = _criterion(
        HungarianMatcher(class_weight=1.0, mask_weight=1.0, dice_weight=1.0, num_points=16)
    )
    losses = criterion(pred, targets)
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert pred["pred_masks"].grad[0].abs().sum() > 0
    assert pred["pred_masks"].grad[1].abs().sum() == 0


def test_losses_are_float32_under_autocast():
    torch.manual_seed(0)
    pred = {"pred_logits": torch.randn(1, 5, 4).bfloat16(), "pred_masks": torch.randn(1, 5, 8, 8)}
    pred["pred_masks"] = pred["pred_masks"].bfloat16()
    targets = [{"labels": torch.tensor([1]), "masks": torch.rand(1, 32, 32) > 0.5}]
    criterion = _criterion(
        HungarianMatcher(class_weight=1.0, mask_weight=1.0, dice_weight=1.0, num_points=16)
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = criterion(pred, targets)
    assert all(v.dtype == torch.float32 for v in losses.values())


def test_from_config_weights_and_checkpoint_buffer():
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 7
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 4
    cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.3
    criterion = SetCriterion(cfg)
    assert criterion.weight_dict["loss_ce"] == cfg.MODEL.MASK_FORMER.CLASS_WEIGHT
    assert criterion.weight_dict["loss_mask_2"] == cfg.MODEL.MASK_FORMER.MASK_WEIGHT
    assert criterion.weight_dict["loss_dice_0"] == cfg.MODEL.MASK_FORMER.DICE_WEIGHT
    assert "loss_ce_3" not in criterion.weight_dict
    assert len(criterion.weight_dict) == 3 * 4
    state = criterion.state_dict()
    assert list(state) == ["empty_weight"]
    torch.testing.assert_close(state["empty_weight"], torch.tensor([1.0] * 7 + [0.3]))
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = False
    assert len(SetCriterion(cfg).weight_dict) == 3
