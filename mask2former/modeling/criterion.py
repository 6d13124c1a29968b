"""Set-prediction losses of Mask2Former.

Shape legend:
    N: images (or videos) in the batch, Q: queries, K: classes (+1 for "no object"),
    R: matched (query, target) pairs of the batch, P: sampled points, H, W: mask size,
    *F: the frame dimensions of a mask, none for images and (T,) for videos of T frames.
"""

import contextlib
from typing import Dict, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from detectron2.utils import comm
from torch import Tensor, nn

from ..utils.host_syncs import to_device
from .matcher import HungarianMatcher

__all__ = ["SetCriterion", "dice_loss", "sigmoid_ce_loss", "mask_uncertainty"]


def dice_loss(logits: Tensor, targets: Tensor, num_masks: Union[float, Tensor]) -> Tensor:
    """Dice loss (with +1 smoothing) summed over masks and divided by ``num_masks``.

    Args:
        logits: (R, P) mask logits at the sampled points.
        targets: (R, P) target values in [0, 1].
        num_masks: normaliser, the (averaged) number of target masks (a float or a 0-dim
            tensor).
    """
    probs = logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def sigmoid_ce_loss(logits: Tensor, targets: Tensor, num_masks: Union[float, Tensor]) -> Tensor:
    """Binary cross-entropy averaged over points, summed over masks, divided by ``num_masks``.

    Args:
        logits: (R, P) mask logits at the sampled points.
        targets: (R, P) target values in [0, 1].
        num_masks: normaliser, the (averaged) number of target masks (a float or a 0-dim
            tensor).
    """
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def mask_uncertainty(logits: Tensor) -> Tensor:
    """Uncertainty of class-agnostic mask logits, (R, 1, P) -> (R, 1, P): -|logit|."""
    return -logits.abs()


class SetCriterion(nn.Module):
    """Losses of a set of mask predictions after Hungarian matching.

    For the final prediction and every auxiliary one: cross-entropy on the classes (unmatched
    queries must predict "no object", whose weight is ``no_object_weight``), and sigmoid BCE and
    dice on points importance-sampled from the matched predicted masks. Loss names are
    ``loss_ce``, ``loss_mask``, ``loss_dice`` and, for auxiliary prediction i, the same with a
    ``_{i}`` suffix. The returned losses are unweighted; ``weight_dict`` holds the weights.

    Video masks (a frame dimension T): the R matched (T, H, W) masks are R * T masks for the
    point sampling (points drawn for every matched instance and frame), and the mask losses
    are still divided by the number of target instances, not instances times frames.
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: Dict[str, float],
        no_object_weight: float,
        num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
    ):
        """
        Args:
            num_classes: number of classes K, without "no object".
            matcher: module matching queries to targets, called as ``matcher(outputs, targets)``
                and returning per-image (query_indices, target_indices).
            weight_dict: loss name -> weight.
            no_object_weight: cross-entropy weight of the "no object" class.
            num_points: number of points sampled per matched mask.
            oversample_ratio: candidate points drawn per sampled point.
            importance_sample_ratio: fraction of points chosen among the most uncertain
                candidates; the rest are uniform.
        """
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.no_object_weight = no_object_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = no_object_weight
        # Persistent: the official checkpoints contain "criterion.empty_weight".
        self.register_buffer("empty_weight", empty_weight)
        # The mask-loss normaliser while ``normalized_by`` is active (None: count the targets).
        self.fixed_num_masks: Optional[float] = None

    @classmethod
    def from_config(cls, cfg) -> Dict:
        mask_former = cfg.MODEL.MASK_FORMER
        weights = {
            "loss_ce": mask_former.CLASS_WEIGHT,
            "loss_mask": mask_former.MASK_WEIGHT,
            "loss_dice": mask_former.DICE_WEIGHT,
        }
        weight_dict = dict(weights)
        if mask_former.DEEP_SUPERVISION:
            # DEC_LAYERS counts the prediction from the learnable queries, so the decoder
            # returns DEC_LAYERS - 1 auxiliary predictions.
            for i in range(mask_former.DEC_LAYERS - 1):
                weight_dict.update({f"{name}_{i}": w for name, w in weights.items()})
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "matcher": HungarianMatcher(cfg),
            "weight_dict": weight_dict,
            "no_object_weight": mask_former.NO_OBJECT_WEIGHT,
            "num_points": mask_former.TRAIN_NUM_POINTS,
            "oversample_ratio": mask_former.OVERSAMPLE_RATIO,
            "importance_sample_ratio": mask_former.IMPORTANCE_SAMPLE_RATIO,
        }

    def loss_labels(
        self,
        outputs: Dict[str, Tensor],
        targets: List[Dict[str, Tensor]],
        indices: List[Tuple[Tensor, Tensor]],
    ) -> Dict[str, Tensor]:
        """Weighted cross-entropy over the K+1 classes of every query."""
        logits = outputs["pred_logits"].float()
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        batch_idx, query_idx = _query_indices(indices)
        matched_labels = [t["labels"][tgt] for t, (_, tgt) in zip(targets, indices)]
        target_classes[batch_idx, query_idx] = torch.cat(matched_labels).to(logits.device)
        loss = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)
        return {"loss_ce": loss}

    def loss_masks(
        self,
        outputs: Dict[str, Tensor],
        targets: List[Dict[str, Tensor]],
        indices: List[Tuple[Tensor, Tensor]],
        num_masks: Union[float, Tensor],
    ) -> Dict[str, Tensor]:
        """Sigmoid BCE and dice on importance-sampled points of the matched masks, each frame
        of a video mask sampled on its own."""
        pred_masks = outputs["pred_masks"]
        batch_idx, query_idx = _query_indices(indices)
        if len(batch_idx) == 0:
            # No targets in the batch: zero losses that still reach every mask parameter.
            zero = pred_masks.float().sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        matched_logits = pred_masks[
            batch_idx.to(pred_masks.device), query_idx.to(pred_masks.device)
        ]
        # (R, *F, H, W) -> (R * F, 1, H, W): every frame of a matched mask is a mask here.
        matched_logits = matched_logits.float().flatten(0, -3)[:, None]
        matched_targets = _matched_target_masks(targets, indices, pred_masks.device)
        matched_targets = matched_targets.flatten(0, -3)[:, None]
        with torch.no_grad():
            point_coords = get_uncertain_point_coords_with_randomness(
                matched_logits,
                mask_uncertainty,
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
            )
            point_targets = point_sample(
                matched_targets, point_coords, align_corners=False
            ).squeeze(1)
        point_logits = point_sample(matched_logits, point_coords, align_corners=False).squeeze(1)
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_targets, num_masks),
            "loss_dice": dice_loss(point_logits, point_targets, num_masks),
        }

    def _losses(
        self,
        outputs: Dict[str, Tensor],
        targets: List[Dict[str, Tensor]],
        num_masks: Union[float, Tensor],
    ) -> Dict[str, Tensor]:
        device = outputs["pred_logits"].device
        # the matches, on the host after the assignment, copied to the device once without
        # waiting for it (indexing device tensors with host indices would copy them each time)
        indices = [
            (to_device(query, device), to_device(target, device))
            for query, target in self.matcher(outputs, targets)
        ]
        losses = self.loss_labels(outputs, targets, indices)
        losses.update(self.loss_masks(outputs, targets, indices, num_masks))
        return losses

    def forward(
        self, outputs: Dict[str, Tensor], targets: List[Dict[str, Tensor]]
    ) -> Dict[str, Tensor]:
        """Compute all losses, in float32 whatever the autocast state.

        Args:
            outputs: "pred_logits" (N, Q, K+1), "pred_masks" (N, Q, *F, H, W) and optionally
                "aux_outputs", a list of dicts with the same two keys.
            targets: N dicts with "labels" (M,) int64 and "masks" (M, *F, H', W') binary
                masks; all images' masks have the same size (padded to the batch's padded
                size).

        Returns:
            loss name -> scalar float32 tensor (unweighted).
        """
        device = outputs["pred_logits"].device
        num_masks = self.fixed_num_masks
        if num_masks is None:
            num_masks = self._average_num_masks(targets, device)
        with torch.autocast(device_type=device.type, enabled=False):
            final = {k: v for k, v in outputs.items() if k != "aux_outputs"}
            losses = self._losses(final, targets, num_masks)
            for i, aux_outputs in enumerate(outputs.get("aux_outputs", [])):
                aux_losses = self._losses(aux_outputs, targets, num_masks)
                losses.update({f"{name}_{i}": value for name, value in aux_losses.items()})
        return losses

    @contextlib.contextmanager
    def normalized_by(self, num_masks: float) -> Iterator[None]:
        """Divide the mask losses by ``num_masks`` instead of by the batch's number of target
        masks averaged over the workers, while the context is active.

        Gradient accumulation uses it: the losses of each of K accumulated batches are then
        normalised by the average over all K batches of all workers, as they would be if the
        K batches ran on K times as many workers.
        """
        if not num_masks > 0:
            raise ValueError(f"SetCriterion.normalized_by: num_masks must be > 0, got {num_masks}.")
        previous, self.fixed_num_masks = self.fixed_num_masks, float(num_masks)
        try:
            yield
        finally:
            self.fixed_num_masks = previous

    @staticmethod
    def _average_num_masks(
        targets: List[Dict[str, Tensor]], device: torch.device
    ) -> Union[float, Tensor]:
        """Number of target masks averaged over workers, at least 1.

        On one worker a Python float (the count is known on the host); over several, a
        0-dim float32 tensor on ``device``, left there: reading it back would make the host
        wait for the device before the losses are even queued.
        """
        num_masks = float(sum(len(t["labels"]) for t in targets))
        world_size = comm.get_world_size()
        if world_size == 1:
            return max(num_masks, 1.0)
        total = to_device(torch.tensor([num_masks], dtype=torch.float32), device)
        torch.distributed.all_reduce(total)
        return torch.clamp(total[0] / world_size, min=1)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, no_object_weight={self.no_object_weight}, "
            f"num_points={self.num_points}, oversample_ratio={self.oversample_ratio}, "
            f"importance_sample_ratio={self.importance_sample_ratio}"
        )


def _query_indices(indices: List[Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tensor]:
    """(image index, query index) of every matched pair, two (R,) int64 tensors."""
    batch_idx = torch.cat(
        [torch.full_like(query, image) for image, (query, _) in enumerate(indices)]
    )
    query_idx = torch.cat([query for query, _ in indices])
    return batch_idx, query_idx


def _matched_target_masks(
    targets: List[Dict[str, Tensor]], indices: List[Tuple[Tensor, Tensor]], device: torch.device
) -> Tensor:
    """Target masks in matching order, (R, *F, H', W') float32."""
    sizes = {tuple(t["masks"].shape[-2:]) for t in targets if len(t["masks"])}
    if len(sizes) > 1:
        raise ValueError(
            f"SetCriterion: target masks of one batch must share a size (pad them to the "
            f"padded image size), got sizes {sorted(sizes)}."
        )
    masks = [t["masks"][tgt.to(t["masks"].device)] for t, (_, tgt) in zip(targets, indices)]
    return torch.cat(masks).to(device=device, dtype=torch.float32)
