import itertools

import pytest
import torch
import torch.nn.functional as F

from mask2former.modeling.matcher import HungarianMatcher


def _random_batch(num_targets, num_queries=7, num_classes=5, size=(16, 20), seed=0):
    generator = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(
            len(num_targets), num_queries, num_classes + 1, generator=generator
        ),
        "pred_masks": torch.randn(len(num_targets), num_queries, *size, generator=generator) * 3,
    }
    targets = [
        {
            "labels": torch.randint(num_classes, (m,), generator=generator),
            "masks": torch.rand(m, size[0] * 2, size[1] * 2, generator=generator) > 0.5,
        }
        for m in num_targets
    ]
    return outputs, targets


def _reference_cost(matcher, logits, masks, labels, target_masks, coords):
    """Per-pair loop: -p(class) + mean BCE + dice on the sampled points. A video's masks
    (Q, T, H, W) / (M, T, H, W) are sampled at the same points in every frame, the frames
    counting as more points."""
    prob = logits.softmax(-1)
    grid = (2 * coords - 1)[None, :, None]  # (1, P, 1, 2)

    def points(mask):
        """(*frames, H, W) -> (frames * P,) values at the points."""
        frames = mask.reshape(-1, 1, *mask.shape[-2:]).float()
        sampled = F.grid_sample(frames, grid.expand(len(frames), -1, -1, -1), align_corners=False)
        return sampled.flatten()

    cost = torch.zeros(len(masks), len(target_masks))
    for q, m in itertools.product(range(len(masks)), range(len(target_masks))):
        pred, tgt = points(masks[q]), points(target_masks[m])
        bce = F.binary_cross_entropy_with_logits(pred, tgt)
        p = pred.sigmoid()
        dice = 1 - (2 * (p * tgt).sum() + 1) / (p.sum() + tgt.sum() + 1)
        cost[q, m] = (
            -matcher.class_weight * prob[q, labels[m]]
            + matcher.mask_weight * bce
            + matcher.dice_weight * dice
        )
    return cost


def test_batched_costs_equal_per_image_reference():
    matcher = HungarianMatcher(class_weight=2.0, mask_weight=5.0, dice_weight=5.0, num_points=50)
    outputs, targets = _random_batch([3, 0, 5])
    coords = torch.rand(3, 50, 2, generator=torch.Generator().manual_seed(1))
    costs = matcher.cost_matrices(outputs, targets, coords)
    assert [c.shape for c in costs] == [(7, 3), (7, 0), (7, 5)]
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
        # Each image alone gives the same matrix as in the batch.
        alone = matcher.cost_matrices(
            {k: v[i : i + 1] for k, v in outputs.items()}, [target], coords[i : i + 1]
        )[0]
        torch.testing.assert_close(alone, costs[i], atol=1e-6, rtol=1e-6)


def test_assignment_is_optimal_and_one_to_one():
    matcher = HungarianMatcher(class_weight=1.0, mask_weight=1.0, dice_weight=1.0, num_points=64)
    outputs, targets = _random_batch([4, 2], num_queries=5)
    torch.manual_seed(3)
    indices = matcher(outputs, targets)
    torch.manual_seed(3)  # the same points as forward() drew
    costs = matcher.cost_matrices(outputs, targets, torch.rand(2, 64, 2))
    for (rows, cols), target, cost in zip(indices, targets, costs):
        assert rows.dtype == cols.dtype == torch.int64
        assert len(rows) == len(cols) == len(target["labels"])
        assert len(set(rows.tolist())) == len(rows)
        assert sorted(cols.tolist()) == list(range(len(target["labels"])))
        # Brute force over every injective assignment of targets to queries.
        best = min(
            sum(cost[q, m] for m, q in enumerate(queries))
            for queries in itertools.permutations(range(cost.shape[0]), cost.shape[1])
        )
        torch.testing.assert_close(cost[rows, cols].sum(), best)


def test_known_matching_by_construction():
    # Target m is an exact copy (as +-10 logits) of query perm[m]'s mask with its class.
    torch.manual_seed(0)
    num_queries, num_classes, size = 6, 4, (24, 24)
    target_masks = torch.zeros(3, *size, dtype=torch.bool)
    target_masks[0, :8] = True
    target_masks[1, 8:16, :12] = True
    target_masks[2, 16:, 12:] = True
    labels = torch.tensor([2, 0, 3])
    perm = [4, 1, 3]
    pred_masks = torch.full((1, num_queries, *size), -10.0)
    pred_logits = torch.zeros(1, num_queries, num_classes + 1)
    for m, q in enumerate(perm):
        pred_masks[0, q][target_masks[m]] = 10.0
        pred_logits[0, q, labels[m]] = 8.0
    matcher = HungarianMatcher(class_weight=1.0, mask_weight=1.0, dice_weight=1.0, num_points=256)
    rows, cols = matcher(
        {"pred_logits": pred_logits, "pred_masks": pred_masks},
        [{"labels": labels, "masks": target_masks}],
    )[0]
    assert dict(zip(cols.tolist(), rows.tolist())) == dict(enumerate(perm))


def test_images_without_targets_give_empty_indices():
    matcher = HungarianMatcher(class_weight=1.0, mask_weight=1.0, dice_weight=1.0, num_points=16)
    outputs, targets = _random_batch([0, 0])
    indices = matcher(outputs, targets)
    assert len(indices) == 2
    for rows, cols in indices:
        assert rows.shape == cols.shape == (0,)
        assert rows.dtype == cols.dtype == torch.int64


def test_non_finite_predictions_give_a_finite_assignment():
    matcher = HungarianMatcher(class_weight=1.0, mask_weight=1.0, dice_weight=1.0, num_points=32)
    outputs, targets = _random_batch([3])
    outputs["pred_logits"][0, 0] = float("nan")
    outputs["pred_logits"][0, 1, 0] = float("inf")
    outputs["pred_masks"][0, 2] = float("nan")
    outputs["pred_masks"][0, 3, :4] = float("-inf")
    coords = torch.rand(1, 32, 2)
    cost = matcher.cost_matrices(outputs, targets, coords)[0]
    assert torch.isfinite(cost).all()
    rows, cols = matcher(outputs, targets)[0]
    assert len(rows) == 3 and sorted(cols.tolist()) == [0, 1, 2]


def test_costs_are_float32_under_autocast():
    matcher = HungarianMatcher(class_weight=1.0, mask_weight=1.0, dice_weight=1.0, num_points=32)
    outputs, targets = _random_batch([2])
    outputs = {k: v.bfloat16() for k, v in outputs.items()}
    coords = torch.rand(1, 32, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cost = matcher.cost_matrices(outputs, targets, coords)[0]
    assert cost.dtype == torch.float32


def test_invalid_config_is_reported():
    with pytest.raises(ValueError, match="TRAIN_NUM_POINTS"):
        HungarianMatcher(class_weight=1.0, mask_weight=1.0, dice_weight=1.0, num_points=0)


def test_matching_a_batch_reads_the_costs_back_once():
    """One copy of all images' cost matrices to the host, not one per image: on a GPU each
    read waits for the device."""
    from mask2former.utils.host_syncs import HostSyncRecorder

    outputs, targets = _random_batch([3, 0, 5, 2])
    matcher = HungarianMatcher(num_points=64)
    with HostSyncRecorder("cpu") as recorder:
        indices = matcher(outputs, targets)
    assert [len(query) for query, _ in indices] == [3, 0, 5, 2]
    # (the recorder also lists labels.to(device), a no-op when the labels are on the device)
    copies = [n for sync, n in recorder.counts().items() if sync.operation == "Tensor.cpu"]
    assert copies == [1]
