"""Hungarian matching between predicted masks and ground-truth segments.

Shape legend:
    N: images (or videos) in the batch, Q: queries, K: classes (+1 for "no object"),
    M: ground-truth segments of one image, S: segments of all images, P: sampled points,
    H, W: mask height and width, *F: the frame dimensions of a mask, none for images and (T,)
    for videos of T frames.
"""

import math
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.projects.point_rend.point_features import point_sample
from torch import Tensor, nn

from ..utils.host_syncs import on_host

__all__ = ["HungarianMatcher", "pairwise_sigmoid_ce", "pairwise_dice", "sanitize_cost"]

# Replacement for inf/NaN entries of a cost matrix; finite so linear_sum_assignment can run.
_LARGE_COST = 1e8


def pairwise_sigmoid_ce(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean sigmoid binary cross-entropy between every prediction and every target.

    Uses BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x), so the cost matrix is
    two matrix products instead of a (Q, M, P) tensor.

    Args:
        logits: (Q, P) mask logits at the sampled points.
        targets: (M, P) target values in [0, 1] at the same points.

    Returns:
        (Q, M) cost matrix.
    """
    num_points = logits.shape[1]
    pos = F.softplus(-logits)
    neg = F.softplus(logits)
    return (pos @ targets.T + neg @ (1 - targets).T) / num_points


def pairwise_dice(logits: Tensor, targets: Tensor) -> Tensor:
    """Dice loss (with +1 smoothing) between every prediction and every target.

    Args:
        logits: (Q, P) mask logits at the sampled points.
        targets: (M, P) target values in [0, 1] at the same points.

    Returns:
        (Q, M) cost matrix.
    """
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def sanitize_cost(cost: Tensor) -> Tensor:
    """Replace NaN and +-inf by large finite values so that an assignment always exists."""
    return torch.nan_to_num(cost, nan=_LARGE_COST, posinf=_LARGE_COST, neginf=-_LARGE_COST).clamp(
        -_LARGE_COST, _LARGE_COST
    )


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to ground-truth segments, per image.

    The cost of pairing query q with target m is
    ``class_weight * -p_q(class_m) + mask_weight * BCE + dice_weight * dice``, where the mask
    terms are computed on ``num_points`` points drawn uniformly at random, the same points for
    the predictions and the targets of an image.

    Video masks (a frame dimension T) are matched as whole tracks: one set of points per
    video, used in every frame, and the mask costs are computed on the T * P values as if the
    frames were more points.
    """

    @configurable
    def __init__(
        self,
        *,
        class_weight: float = 1.0,
        mask_weight: float = 1.0,
        dice_weight: float = 1.0,
        num_points: int,
    ):
        """
        Args:
            class_weight: weight of the classification cost.
            mask_weight: weight of the sigmoid binary cross-entropy cost.
            dice_weight: weight of the dice cost.
            num_points: number of points sampled per image to compute the mask costs.
        """
        super().__init__()
        if class_weight == 0 and mask_weight == 0 and dice_weight == 0:
            raise ValueError(
                "HungarianMatcher: all cost weights are 0; set at least one of "
                "MODEL.MASK_FORMER.CLASS_WEIGHT, MASK_WEIGHT, DICE_WEIGHT > 0."
            )
        if num_points <= 0:
            raise ValueError(
                f"HungarianMatcher: num_points must be > 0 "
                f"(MODEL.MASK_FORMER.TRAIN_NUM_POINTS), got {num_points}."
            )
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.num_points = num_points

    @classmethod
    def from_config(cls, cfg) -> Dict:
        mask_former = cfg.MODEL.MASK_FORMER
        return {
            "class_weight": mask_former.CLASS_WEIGHT,
            "mask_weight": mask_former.MASK_WEIGHT,
            "dice_weight": mask_former.DICE_WEIGHT,
            "num_points": mask_former.TRAIN_NUM_POINTS,
        }

    @torch.no_grad()
    def cost_matrices(
        self, outputs: Dict[str, Tensor], targets: List[Dict[str, Tensor]], point_coords: Tensor
    ) -> List[Tensor]:
        """Cost matrices of all images, computed together in float32.

        One matrix product gives the costs of all N * Q queries against all T targets; the
        diagonal blocks are the per-image matrices.

        Args:
            outputs: "pred_logits" (N, Q, K+1) and "pred_masks" (N, Q, *F, H, W) logits.
            targets: N dicts with "labels" (M,) int64 and "masks" (M, *F, H', W') binary masks
                (H', W' may differ from H, W: points are in normalised coordinates).
            point_coords: (N, P, 2) sampling points in [0, 1] x [0, 1], (x, y) order.

        Returns:
            N cost matrices, (Q, M) float32 each, free of inf/NaN.
        """
        pred_logits = outputs["pred_logits"]
        device_type = pred_logits.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            class_prob = pred_logits.float().softmax(-1)
            num_queries = class_prob.shape[1]
            # (N, Q, *F, H, W) -> (N, Q * F, H, W) -> (N * Q, F * P), frame outermost.
            pred_masks = outputs["pred_masks"].float().flatten(1, -3)
            pred_points = point_sample(pred_masks, point_coords, align_corners=False)
            pred_points = pred_points.view(len(pred_masks) * num_queries, -1)
            target_points = self._sample_targets(targets, point_coords)
            labels = torch.cat([t["labels"] for t in targets]).to(class_prob.device)
            cost = (
                self.class_weight * -class_prob.flatten(0, 1)[:, labels]
                + self.mask_weight * pairwise_sigmoid_ce(pred_points, target_points)
                + self.dice_weight * pairwise_dice(pred_points, target_points)
            )
            cost = sanitize_cost(cost).view(len(targets), num_queries, -1)
            num_targets = [len(t["labels"]) for t in targets]
            starts = np.cumsum([0] + num_targets)
            costs = [cost[i, :, starts[i] : starts[i + 1]] for i in range(len(targets))]
        return costs

    @staticmethod
    def _sample_targets(targets: List[Dict[str, Tensor]], point_coords: Tensor) -> Tensor:
        """Sample every target mask at its image's points: (S, F * P) float32, frame
        outermost."""
        samples = []
        for index, target in enumerate(targets):
            masks = target["masks"]
            if len(masks) == 0:
                continue
            coords = point_coords[index : index + 1].expand(len(masks), -1, -1)
            # (M, *F, H, W) -> (M, F, H, W): the frames as channels, sampled at the same points.
            frames = masks.float().reshape(len(masks), -1, *masks.shape[-2:])
            samples.append(point_sample(frames, coords, align_corners=False).flatten(1))
        if not samples:
            frames = math.prod(targets[0]["masks"].shape[1:-2]) if targets else 1
            return point_coords.new_zeros((0, frames * point_coords.shape[1]))
        return torch.cat(samples)

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, Tensor], targets: List[Dict[str, Tensor]]
    ) -> List[Tuple[Tensor, Tensor]]:
        """Match queries to targets.

        Args:
            outputs: "pred_logits" (N, Q, K+1) and "pred_masks" (N, Q, *F, H, W) logits;
                other keys are ignored.
            targets: N dicts with "labels" (M,) int64 and "masks" (M, *F, H', W').

        Returns:
            N pairs (query_indices, target_indices), int64 tensors of length min(Q, M) each,
            on the CPU: query ``query_indices[i]`` is matched to target ``target_indices[i]``.
            An image without targets gives two empty tensors.
        """
        # imported here: scipy.optimize takes most of a second to import, and only training
        # matches (a Predictor or an export never does)
        from scipy.optimize import linear_sum_assignment

        batch_size = outputs["pred_logits"].shape[0]
        point_coords = torch.rand(
            batch_size, self.num_points, 2, device=outputs["pred_logits"].device
        )
        costs = self.cost_matrices(outputs, targets, point_coords)
        # one copy to the host for the whole batch: one wait for the device, not one per image
        host_costs = torch.cat([cost.reshape(-1) for cost in costs]).cpu()
        host_costs = host_costs.split([cost.numel() for cost in costs])
        indices = []
        with on_host():
            for cost, host_cost in zip(costs, host_costs):
                rows, cols = linear_sum_assignment(host_cost.view(cost.shape).numpy())
                indices.append(
                    (
                        torch.as_tensor(rows, dtype=torch.int64),
                        torch.as_tensor(cols, dtype=torch.int64),
                    )
                )
        return indices

    def extra_repr(self) -> str:
        return (
            f"class_weight={self.class_weight}, mask_weight={self.mask_weight}, "
            f"dice_weight={self.dice_weight}, num_points={self.num_points}"
        )
