"""The Mask2Former meta-architecture: backbone, mask-classification head, losses, inference.

Shape legend:
    N: images in the batch, Q: queries, K: classes (without "no object"),
    H, W: output (original image) size.
"""

from typing import Dict, List, Optional, Set, Tuple

import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.modeling import (
    META_ARCH_REGISTRY,
    Backbone,
    ResNet,
    build_backbone,
    build_sem_seg_head,
)
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import BitMasks, Boxes, ImageList, Instances
from torch import Tensor, nn
from torch.nn import functional as F

from ...utils.cuda_graphs import GraphedNetwork
from ...utils.host_syncs import to_device
from ..autocast_weights import store_weights_in_autocast_dtype
from ..batchnorm_folding import fold_frozen_batchnorm
from ..criterion import SetCriterion
from ..pixel_decoder.ops.levels import tracing
from ..postprocessing import (
    instance_inference,
    instance_query_mask,
    mask_boxes,
    panoptic_inference,
    panoptic_queries,
    resize_mask_logits,
    semantic_inference,
)
from ..sliding_window import (
    SlidingWindow,
    WindowInstance,
    combine_panoptic,
    merge_window_instances,
    paste_instances,
    window_instances,
)

__all__ = ["MaskFormer", "sliding_window_from_config", "CPU_CHANNELS_LAST_MIN_PIXELS"]

# From how many pixels (H x W of the padded batch) a ResNet backbone runs on channels-last
# images on the CPU, in eval mode: oneDNN's convolutions then skip reordering the activations
# into their blocked layout and back at every layer. The R50 backbone at 512 x 512 and at
# 800 x 1216 is 1.28x faster in float32 (BENCHMARKS.md, "Channels-last backbone"); on small
# images, such as the synthetic shapes' 128 x 192, it did not help.
CPU_CHANNELS_LAST_MIN_PIXELS = 1 << 16


def sliding_window_from_config(cfg) -> Optional[SlidingWindow]:
    """``MODEL.MASK_FORMER.TEST.SLIDING_WINDOW`` (and for the panoptic output Panoptic FPN's
    ``MODEL.PANOPTIC_FPN.COMBINE`` thresholds), checked; None when it is not enabled."""
    settings = cfg.MODEL.MASK_FORMER.TEST.SLIDING_WINDOW
    if not settings.ENABLED:
        return None
    combine = cfg.MODEL.PANOPTIC_FPN.COMBINE
    return SlidingWindow.from_values(
        settings.SIZE,
        settings.STRIDE,
        settings.WINDOWS_PER_PASS,
        settings.MERGE_THRESHOLD,
        where="MODEL.MASK_FORMER.TEST.SLIDING_WINDOW",
        panoptic_instance_threshold=combine.INSTANCES_CONFIDENCE_THRESH,
        panoptic_overlap_threshold=combine.OVERLAP_THRESH,
        panoptic_stuff_area=combine.STUFF_AREA_LIMIT,
    )


def _scores_at_output_size(
    scores: Tensor, image_size: Tuple[int, int], output_size: Tuple[int, int]
) -> Tensor:
    """(K, H', W') per-class scores, the image in their top-left ``image_size``, resized to
    ``output_size``: Detectron2's ``sem_seg_postprocess``, except that no copy is made when the
    sizes already match (bilinear resizing to the same size changes nothing), which spares a
    second K x H x W tensor on large images."""
    if tuple(scores.shape[-2:]) == tuple(image_size) == tuple(output_size):
        return scores
    return sem_seg_postprocess(scores, image_size, *output_size)


def _instances_at_output_size(instances: Instances, output_size: Tuple[int, int]) -> Instances:
    """``instances`` (full-size binary masks) resized to ``output_size``: the masks bilinearly
    as 0/1 maps, thresholded at 0.5, the boxes made again from them; unchanged when the sizes
    match."""
    if tuple(instances.image_size) == tuple(output_size):
        return instances
    resized = Instances(tuple(output_size))
    # a few masks at a time: float copies of all of them at full size would be 4 bytes a pixel
    size = tuple(output_size)
    chunks = [
        F.interpolate(chunk[None].float(), size=size, mode="bilinear", align_corners=False)[0] > 0.5
        for chunk in instances.pred_masks.split(16)
        if len(chunk)
    ]
    empty = instances.pred_masks.new_zeros((0, *size))
    resized.pred_masks = torch.cat(chunks) if chunks else empty
    resized.pred_boxes = Boxes(mask_boxes(resized.pred_masks))
    resized.scores = instances.scores
    resized.pred_classes = instances.pred_classes
    return resized


def _panoptic_at_output_size(
    panoptic_seg: Tensor, segments_info: List[Dict], output_size: Tuple[int, int]
) -> Tuple[Tensor, List[Dict]]:
    """A panoptic segmentation resized to ``output_size`` (nearest), its segments' areas
    counted again and those left without pixels dropped; unchanged when the sizes match."""
    if tuple(panoptic_seg.shape) == tuple(output_size):
        return panoptic_seg, segments_info
    resized = F.interpolate(panoptic_seg[None, None].float(), size=tuple(output_size))
    resized = resized[0, 0].to(torch.int32)
    areas = torch.bincount(resized.flatten().long(), minlength=len(segments_info) + 1).tolist()
    kept = [{**info, "area": areas[info["id"]]} for info in segments_info if areas[info["id"]]]
    return resized, kept


@META_ARCH_REGISTRY.register()
class MaskFormer(nn.Module):
    """Mask classification model: a set of (class, mask) predictions per image.

    Training input: a list of dicts with "image" (3, H, W) in INPUT.FORMAT and "instances"
    (``gt_classes`` (M,), ``gt_masks`` BitMasks or (M, H, W) bool); returns the weighted losses.
    Inference input: dicts with "image" and optionally the output "height"/"width" (default: the
    image size); returns per image "sem_seg" (K, H, W) probabilities, "panoptic_seg"
    ((H, W) int32 segment ids, segments_info) and "instances", each when its flag is on.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: SetCriterion,
        object_mask_threshold: float,
        overlap_threshold: float,
        mask_threshold: float,
        metadata: Metadata,
        size_divisibility: int,
        sem_seg_postprocess_before_inference: bool,
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
        semantic_on: bool,
        panoptic_on: bool,
        instance_on: bool,
        test_topk_per_image: int,
        sliding_window: Optional[SlidingWindow] = None,
    ):
        """
        Args:
            backbone: detectron2 backbone.
            sem_seg_head: head returning "pred_logits", "pred_masks" and "aux_outputs".
            criterion: losses; its ``weight_dict`` weights them and selects those returned.
            object_mask_threshold: panoptic inference keeps queries with class score above it.
            overlap_threshold: panoptic inference keeps segments that keep at least this
                fraction of their mask.
            mask_threshold: probability at which masks are binarised.
            metadata: dataset metadata; ``thing_dataset_id_to_contiguous_id`` tells thing
                classes apart for panoptic and (with panoptic_on) instance inference.
            size_divisibility: pad batches to a multiple of this; negative: the backbone's.
            sem_seg_postprocess_before_inference: resize masks to the output size before
                semantic inference (forced when panoptic or instance inference is on).
            pixel_mean, pixel_std: per-channel normalisation, in INPUT.FORMAT order.
            semantic_on, panoptic_on, instance_on: which outputs inference returns.
            test_topk_per_image: instances returned per image (before the thing filter).
            sliding_window: at inference, segment each image in these overlapping windows
                (:meth:`sliding_window_inference`); None: whole images.
        """
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.mask_threshold = mask_threshold
        self.metadata = metadata
        if size_divisibility < 0:
            size_divisibility = backbone.size_divisibility
        self.size_divisibility = size_divisibility
        self.sem_seg_postprocess_before_inference = (
            sem_seg_postprocess_before_inference or panoptic_on or instance_on
        )
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.semantic_on = semantic_on
        self.panoptic_on = panoptic_on
        self.instance_on = instance_on
        self.test_topk_per_image = test_topk_per_image
        self.sliding_window = sliding_window
        # eval-mode ResNet on the CPU: channels-last images from CPU_CHANNELS_LAST_MIN_PIXELS
        # (an attribute, not a config key: the results are the same up to float rounding)
        self.cpu_channels_last = isinstance(backbone, ResNet)
        # inference replays the network from CUDA graphs when set (use_cuda_graphs)
        self.graphed_network: Optional[GraphedNetwork] = None

    @classmethod
    def from_config(cls, cfg) -> Dict:
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "sem_seg_head": build_sem_seg_head(cfg, backbone.output_shape()),
            "criterion": SetCriterion(cfg),
            "metadata": MetadataCatalog.get(cfg.DATASETS.TRAIN[0]),
            **cls.inference_options(cfg),
        }

    @staticmethod
    def inference_options(cfg) -> Dict:
        """The constructor arguments read from the config besides the modules and metadata:
        pre- and post-processing (shared with the ONNX Runtime model, mask2former.export)."""
        test = cfg.MODEL.MASK_FORMER.TEST
        return {
            "object_mask_threshold": test.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": test.OVERLAP_THRESHOLD,
            "mask_threshold": test.MASK_THRESHOLD,
            "size_divisibility": cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY,
            "sem_seg_postprocess_before_inference": test.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "semantic_on": test.SEMANTIC_ON,
            "panoptic_on": test.PANOPTIC_ON,
            "instance_on": test.INSTANCE_ON,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "sliding_window": sliding_window_from_config(cfg),
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: List[Dict]) -> object:
        """Losses (training) or per-image results (inference); see the class docstring."""
        if not self.training and self.sliding_window is not None:
            return [self.sliding_window_inference(inputs) for inputs in batched_inputs]
        images = self.preprocess_image(batched_inputs)
        outputs = self.run_network(images.tensor)
        if self.training:
            return self.losses(outputs, batched_inputs, images)
        return self.inference(outputs, batched_inputs, images)

    def network(self, images: Tensor) -> Dict[str, object]:
        """The network between pre- and post-processing: backbone, then head.

        Args:
            images: (N, 3, H_pad, W_pad) normalised, padded batch.

        Returns:
            the head's dict: "pred_logits" (N, Q, K+1), "pred_masks" (N, Q, H_pad / 4,
            W_pad / 4) and "aux_outputs".
        """
        return self.sem_seg_head(self.backbone(self.backbone_input(images)))

    def run_network(self, images: Tensor) -> Dict[str, object]:
        """:meth:`network`, replayed from CUDA graphs in eval mode after
        :meth:`use_cuda_graphs`. Replayed outputs are overwritten by the next forward."""
        if self.graphed_network is not None and not self.training:
            return self.graphed_network(images)
        return self.network(images)

    def prepare_for_inference(self, autocast_dtype: Optional[torch.dtype] = None) -> None:
        """Cut the device's work per forward, with the same outputs up to float rounding:
        frozen batch norms folded into their convolutions
        (:func:`mask2former.modeling.batchnorm_folding.fold_frozen_batchnorm`) and, with an
        ``autocast_dtype`` (bfloat16 or float16), the weights autocast would cast at every
        forward stored in it
        (:func:`mask2former.modeling.autocast_weights.store_weights_in_autocast_dtype`). The
        model is then for inference only, under autocast to that dtype (None: float32)."""
        fold_frozen_batchnorm(self)
        if autocast_dtype is not None:
            store_weights_in_autocast_dtype(self, autocast_dtype)

    def use_cuda_graphs(
        self, autocast_dtype: Optional[torch.dtype] = None, *, max_graphs: int = 8
    ) -> None:
        """Replay the network's inference forwards from CUDA graphs, one per input shape and
        precision (:class:`mask2former.utils.cuda_graphs.GraphedNetwork`): the host launches
        one graph instead of every kernel. The first forward of each shape captures its graph
        (a few forwards' time); inputs of few distinct sizes gain most. Training forwards and
        forwards that record gradients are not replayed. The graphs replay the device's work,
        so the model is first prepared to do less (:meth:`prepare_for_inference`): it is then
        for inference only.

        Args:
            autocast_dtype: the dtype the forwards will run under autocast to (bfloat16 or
                float16), or None for float32.
            max_graphs: graphs kept at once (least recently used dropped).

        Raises:
            ValueError: the model is not on a CUDA device.
        """
        if self.device.type != "cuda":
            raise ValueError(
                f"CUDA graphs need the model on a CUDA device; it is on {self.device}. Move it "
                "with model.to('cuda') first, or leave CUDA graphs off."
            )
        self.prepare_for_inference(autocast_dtype)
        self.graphed_network = GraphedNetwork(self.network, max_graphs=max_graphs)

    def backbone_input(self, images: Tensor) -> Tensor:
        """``images`` in the memory layout the backbone runs fastest on: channels-last for a
        ResNet in eval mode on the CPU from :data:`CPU_CHANNELS_LAST_MIN_PIXELS` pixels (its
        features then stay channels-last; the same values up to float rounding), else as
        they are. Not while tracing or compiling: exported graphs keep the default layout."""
        # the tracers first: a size comparison would put a guard on symbolic sizes
        if torch.jit.is_tracing() or tracing():
            return images
        if (
            self.cpu_channels_last
            and not self.training
            and images.device.type == "cpu"
            and images.shape[-2] * images.shape[-1] >= CPU_CHANNELS_LAST_MIN_PIXELS
        ):
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise and pad the images into one (N, 3, H_pad, W_pad) batch."""
        return self.normalize_and_pad([x["image"] for x in batched_inputs])

    def normalize_and_pad(self, images: List[Tensor]) -> ImageList:
        """(3, H_i, W_i) images in INPUT.FORMAT -> one normalised (N, 3, H_pad, W_pad) batch,
        padded to a multiple of ``size_divisibility``."""
        # images from a data loader are on the host: copied without waiting for the device
        images = [(to_device(x, self.device) - self.pixel_mean) / self.pixel_std for x in images]
        return ImageList.from_tensors(images, self.size_divisibility)

    def losses(
        self, outputs: Dict, batched_inputs: List[Dict], images: ImageList
    ) -> Dict[str, Tensor]:
        """Weighted criterion losses; losses without a weight in ``weight_dict`` are dropped."""
        targets = self.prepare_targets(self.training_instances(batched_inputs), images)
        losses = self.criterion(outputs, targets)
        weight_dict = self.criterion.weight_dict
        return {
            name: loss * weight_dict[name] for name, loss in losses.items() if name in weight_dict
        }

    @staticmethod
    def training_instances(batched_inputs: List[Dict]) -> List[object]:
        """Each input's "instances", or a ValueError that says which mapper gives them."""
        if any("instances" not in x for x in batched_inputs):
            raise ValueError(
                "MaskFormer: training inputs need 'instances' (gt_classes, gt_masks); use a "
                "dataset mapper that produces them (INPUT.DATASET_MAPPER_NAME)."
            )
        return [x["instances"] for x in batched_inputs]

    def count_targets(self, batched_inputs: List[Dict]) -> int:
        """How many target masks the criterion gets for these training inputs (the number it
        normalises the mask losses by), counted without running the model; gradient
        accumulation adds these up over its batches."""
        return sum(len(instances) for instances in self.training_instances(batched_inputs))

    def prepare_targets(
        self, gt_instances: List[Instances], images: ImageList
    ) -> List[Dict[str, Tensor]]:
        """Criterion targets: labels (M,) and masks (M, H_pad, W_pad) zero-padded like images."""
        padded_size = tuple(images.tensor.shape[-2:])
        return [
            {
                # from the data loader, on the host: copied without waiting for the device
                "labels": to_device(instances.gt_classes, self.device),
                "masks": self.padded_masks(instances, padded_size),
            }
            for instances in gt_instances
        ]

    def padded_masks(self, instances: Instances, padded_size: Tuple[int, int]) -> Tensor:
        """``instances.gt_masks`` (BitMasks or (M, H, W)) zero-padded at the bottom and right
        to ``padded_size``, (M, H_pad, W_pad) on the model's device."""
        gt_masks = instances.gt_masks
        if isinstance(gt_masks, BitMasks):
            gt_masks = gt_masks.tensor
        # from the data loader, on the host: copied without waiting for the device
        gt_masks = to_device(gt_masks, self.device)
        height, width = gt_masks.shape[-2:]
        padded = gt_masks.new_zeros((len(gt_masks), *padded_size))
        padded[:, :height, :width] = gt_masks
        return padded

    def inference(
        self, outputs: Dict, batched_inputs: List[Dict], images: ImageList
    ) -> List[Dict[str, object]]:
        """Per-image outputs at each input's "height" x "width".

        The post-processing functions compute in float32 with autocast off (see
        :mod:`mask2former.modeling.postprocessing`), whatever the precision of the forward.
        """
        padded_size = tuple(images.tensor.shape[-2:])
        class_logits = outputs["pred_logits"]
        mask_logits = outputs["pred_masks"]
        results = []
        for index, (inputs, image_size) in enumerate(zip(batched_inputs, images.image_sizes)):
            output_size = (inputs.get("height", image_size[0]), inputs.get("width", image_size[1]))
            results.append(
                self.inference_single_image(
                    class_logits[index], mask_logits[index], padded_size, image_size, output_size
                )
            )
        return results

    def sliding_window_inference(self, inputs: Dict) -> Dict[str, object]:
        """The outputs of one image segmented in overlapping windows.

        The windows (``self.sliding_window``, in pixels of ``inputs["image"]``) are run
        ``windows_per_pass`` at a time and each window's outputs are computed at its own
        resolution, as whole images' are. Semantic: each window's per-class scores are added
        into a canvas of the image's size and divided, pixel by pixel, by the number of windows
        that covered it. Instances: each window's top ``test_topk_per_image`` (of the thing
        classes when the panoptic output is on, as for whole images) are merged across windows
        (:func:`~mask2former.modeling.sliding_window.merge_window_instances`) and the
        ``test_topk_per_image`` best kept. Panoptic: things from the merged instances and stuff
        from the semantic scores (:func:`~mask2former.modeling.sliding_window.combine_panoptic`).
        All are then resized to the output size. Memory grows with the windows per pass, and
        with the image only through the outputs.

        Args:
            inputs: "image" (3, H, W) in INPUT.FORMAT and optionally the output "height" and
                "width" (default H and W).

        Returns:
            "sem_seg" (K, height, width) float32 scores, "instances" and "panoptic_seg", as the
            semantic, instance and panoptic flags say.
        """
        image = inputs["image"]
        height, width = image.shape[-2:]
        output_size = (inputs.get("height", height), inputs.get("width", width))
        boxes = self.sliding_window.boxes(height, width)
        need_scores = self.semantic_on or self.panoptic_on
        need_instances = self.instance_on or self.panoptic_on
        thing_classes = self._thing_classes() if self.panoptic_on else None
        scores: Optional[Tensor] = None
        coverage = torch.zeros((height, width), dtype=torch.float32, device=self.device)
        candidates: List[WindowInstance] = []
        step = self.sliding_window.windows_per_pass
        for first in range(0, len(boxes), step):
            group = boxes[first : first + step]
            windows = self.normalize_and_pad(
                [image[:, top:bottom, left:right] for top, left, bottom, right in group]
            )
            outputs = self.run_network(windows.tensor)
            padded_size = tuple(windows.tensor.shape[-2:])
            for index, (top, left, bottom, right) in enumerate(group):
                size = (bottom - top, right - left)
                class_logits = outputs["pred_logits"][index]
                mask_probs = resize_mask_logits(
                    outputs["pred_masks"][index], padded_size, size, size
                ).sigmoid_()
                if need_scores:
                    window_scores = semantic_inference(class_logits, mask_probs)
                    if scores is None:
                        scores = window_scores.new_zeros((len(window_scores), height, width))
                    scores[:, top:bottom, left:right] += window_scores
                    coverage[top:bottom, left:right] += 1
                if need_instances:
                    instances = instance_inference(
                        class_logits,
                        mask_probs,
                        topk=self.test_topk_per_image,
                        mask_threshold=self.mask_threshold,
                        thing_classes=thing_classes,
                    )
                    candidates += window_instances(instances, (top, left), first + index)
        if need_scores:
            scores /= coverage
        merged = merge_window_instances(candidates, self.sliding_window.merge_threshold)
        result: Dict[str, object] = {}
        if self.panoptic_on:
            sliding = self.sliding_window
            panoptic = combine_panoptic(
                merged,
                scores,
                thing_classes=thing_classes,
                instance_score_threshold=sliding.panoptic_instance_threshold,
                overlap_threshold=sliding.panoptic_overlap_threshold,
                stuff_area_limit=sliding.panoptic_stuff_area,
            )
            result["panoptic_seg"] = _panoptic_at_output_size(*panoptic, output_size)
        if self.semantic_on:
            result["sem_seg"] = _scores_at_output_size(scores, (height, width), output_size)
        if self.instance_on:
            kept = merged[: self.test_topk_per_image]
            instances = paste_instances(kept, (height, width), self.device)
            result["instances"] = _instances_at_output_size(instances, output_size)
        return result

    def inference_single_image(
        self,
        class_logits: Tensor,
        mask_logits: Tensor,
        padded_size: Tuple[int, int],
        image_size: Tuple[int, int],
        output_size: Tuple[int, int],
    ) -> Dict[str, object]:
        """The enabled outputs of one image.

        Args:
            class_logits: (Q, K+1).
            mask_logits: (Q, H_pad / 4, W_pad / 4).
            padded_size: (H_pad, W_pad) of the batch.
            image_size: size of this image inside the padded batch.
            output_size: (H, W) of the results.
        """
        result = {}
        if not self.sem_seg_postprocess_before_inference:
            # Semantic only, the official order: infer at the input resolution, then resize.
            mask_probs = resize_mask_logits(mask_logits, padded_size, image_size, image_size)
            sem_seg = semantic_inference(class_logits, mask_probs.sigmoid_())
            result["sem_seg"] = _scores_at_output_size(sem_seg, image_size, output_size)
            return result
        queries = self._queries_needed(class_logits)
        if queries is not None:
            class_logits, mask_logits = class_logits[queries], mask_logits[queries]
        mask_probs = resize_mask_logits(mask_logits, padded_size, image_size, output_size)
        mask_probs = mask_probs.sigmoid_()
        if self.semantic_on:
            result["sem_seg"] = semantic_inference(class_logits, mask_probs)
        if self.panoptic_on:
            result["panoptic_seg"] = panoptic_inference(
                class_logits,
                mask_probs,
                thing_classes=self._thing_classes(),
                object_mask_threshold=self.object_mask_threshold,
                overlap_threshold=self.overlap_threshold,
                mask_threshold=self.mask_threshold,
            )
        if self.instance_on:
            result["instances"] = instance_inference(
                class_logits,
                mask_probs,
                topk=self.test_topk_per_image,
                mask_threshold=self.mask_threshold,
                thing_classes=self._thing_classes() if self.panoptic_on else None,
            )
        return result

    def _queries_needed(self, class_logits: Tensor) -> Optional[Tensor]:
        """Sorted indices of the queries whose masks the enabled outputs read; None for all.

        Panoptic and instance results computed on this subset equal those on all queries.
        Finding it reads one tensor back from the device (its length).
        """
        if self.semantic_on:
            return None
        needed = torch.zeros(len(class_logits), dtype=torch.bool, device=class_logits.device)
        if self.panoptic_on:
            needed |= panoptic_queries(class_logits, self.object_mask_threshold)
        if self.instance_on:
            thing_classes = self._thing_classes() if self.panoptic_on else None
            needed |= instance_query_mask(class_logits, self.test_topk_per_image, thing_classes)
        return needed.nonzero().squeeze(1)

    def _thing_classes(self) -> Set[int]:
        """Contiguous ids of the thing classes, from the metadata."""
        mapping = getattr(self.metadata, "thing_dataset_id_to_contiguous_id", None)
        if mapping is None:
            raise ValueError(
                f"MaskFormer: metadata of {self.metadata.name!r} has no "
                "thing_dataset_id_to_contiguous_id, needed by panoptic inference; register the "
                "dataset with it or set MODEL.MASK_FORMER.TEST.PANOPTIC_ON False."
            )
        return set(mapping.values())
