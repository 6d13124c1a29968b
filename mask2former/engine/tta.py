"""Test-time augmentation for semantic segmentation (multi-scale and horizontal flip)."""

import logging
from typing import Dict, List

import torch
from detectron2.config import CfgNode
from detectron2.data.transforms import HFlipTransform
from detectron2.modeling import DatasetMapperTTA
from torch import nn

logger = logging.getLogger(__name__)


class SemanticSegmentorWithTTA(nn.Module):
    """Wrap a semantic segmentor to average its class probabilities over augmented inputs.

    Each input image is resized so that its short side is each of ``TEST.AUG.MIN_SIZES`` (long
    side at most ``TEST.AUG.MAX_SIZE``), and also flipped horizontally when ``TEST.AUG.FLIP``;
    the model returns "sem_seg" at the input's original "height"/"width" for every version,
    flipped predictions are flipped back, and the mean is returned.
    """

    def __init__(self, cfg: CfgNode, model: nn.Module, tta_mapper=None, batch_size: int = 1):
        """
        Args:
            cfg: the full config (``TEST.AUG.*``).
            model: a model returning ``[{"sem_seg": (K, H, W) tensor}, ...]`` in eval mode;
                may be wrapped in DistributedDataParallel.
            tta_mapper: callable turning one input dict into a list of augmented dicts, each
                with a "transforms" entry; default ``DatasetMapperTTA(cfg)``.
            batch_size: number of augmented images run through the model at once.
        """
        super().__init__()
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        self.model = model
        self.tta_mapper = tta_mapper if tta_mapper is not None else DatasetMapperTTA(cfg)
        self.batch_size = batch_size

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        """Same input and output format as the wrapped model's inference ("sem_seg" only)."""
        return [self._inference_one_image(x) for x in batched_inputs]

    def _inference_one_image(self, inputs: Dict) -> Dict[str, torch.Tensor]:
        augmented_inputs = self.tta_mapper(inputs)
        transforms = [x.pop("transforms") for x in augmented_inputs]
        total = None
        for start in range(0, len(augmented_inputs), self.batch_size):
            batch = augmented_inputs[start : start + self.batch_size]
            with torch.no_grad():
                outputs = self.model(batch)
            for output, transform in zip(outputs, transforms[start : start + self.batch_size]):
                probs = output["sem_seg"]
                if any(isinstance(t, HFlipTransform) for t in transform.transforms):
                    probs = probs.flip(dims=[2])
                total = probs if total is None else total + probs
        return {"sem_seg": total / len(augmented_inputs)}
