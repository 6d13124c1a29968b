"""Drawing predictions with detectron2's ``Visualizer`` / ``VideoVisualizer``.

Mask2Former predicts one contiguous class index over all classes (things and stuff alike),
while detectron2's visualizers look thing indices up in ``thing_classes`` and stuff indices
in ``stuff_classes``. :func:`display_metadata` builds a metadata object in which both lists
hold all classes, with the names and colours of the data set's metadata, so that both
visualizers name and colour every segment correctly.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data.catalog import Metadata
from detectron2.data.detection_utils import convert_image_to_rgb
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.colormap import colormap
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, Visualizer

from .class_names import class_names_from_metadata, list_of_length
from .results import TASKS, InstanceResult, PanopticResult, Prediction

__all__ = [
    "ANNOTATION_KEYS",
    "TASKS",
    "annotation_tasks",
    "display_metadata",
    "draw_annotations",
    "draw_prediction",
    "draw_tracks",
    "draw_training_sample",
    "draw_video_annotations",
    "draw_video_training_sample",
    "video_track_ids",
    "VideoPredictionDrawer",
]


def _class_colors(metadata: Metadata, num_classes: int) -> List[Tuple[int, int, int]]:
    for key in ("stuff_colors", "thing_colors"):
        colors = list_of_length(metadata, key, num_classes)
        if colors is not None:
            return [tuple(int(c) for c in color) for color in colors]
    palette = colormap(rgb=True, maximum=255)
    return [tuple(int(c) for c in palette[i % len(palette)]) for i in range(num_classes)]


def display_metadata(metadata: Metadata, num_classes: int) -> Metadata:
    """A metadata object indexed by the model's contiguous class index, for the visualizers.

    Args:
        metadata: the data set's metadata (``MetadataCatalog.get(cfg.DATASETS.TEST[0])``).
        num_classes: MODEL.SEM_SEG_HEAD.NUM_CLASSES.
    """
    names = class_names_from_metadata(metadata, num_classes)
    colors = _class_colors(metadata, num_classes)
    return Metadata(
        name=f"{metadata.name}/display" if hasattr(metadata, "name") else "display",
        thing_classes=names,
        stuff_classes=names,
        thing_colors=colors,
        stuff_colors=colors,
    )


def _to_instances(result: InstanceResult, image_size: Tuple[int, int]) -> Instances:
    instances = Instances(image_size)
    instances.pred_masks = torch.from_numpy(result.masks)
    instances.pred_boxes = Boxes(torch.from_numpy(result.boxes))
    instances.scores = torch.from_numpy(result.scores)
    instances.pred_classes = torch.from_numpy(result.classes)
    return instances


def _segments_info(result: PanopticResult) -> List[dict]:
    """segments as the visualizers want them (a score only when every segment has one)."""
    with_scores = all(segment["score"] is not None for segment in result.segments)
    keys = ("id", "category_id", "isthing") + (("score",) if with_scores else ())
    return [{key: segment[key] for key in keys} for segment in result.segments]


def _result_for_task(prediction: Prediction, task: str):
    result = {
        "panoptic": prediction.panoptic,
        "instance": prediction.instances,
        "semantic": prediction.semantic,
    }[task]
    if result is None:
        raise ValueError(
            f"The prediction has no {task} result (it has: "
            f"{', '.join(prediction.available_tasks()) or 'none'}); enable "
            f"MODEL.MASK_FORMER.TEST.{task.upper()}_ON in the config."
        )
    return result


def draw_prediction(
    image_rgb: np.ndarray, prediction: Prediction, task: str, metadata: Metadata
) -> np.ndarray:
    """Draw one task's prediction over an image.

    Args:
        image_rgb: (H, W, 3) uint8 RGB image.
        prediction: the image's prediction.
        task: "panoptic", "instance" or "semantic".
        metadata: see :func:`display_metadata`.

    Returns:
        (H, W, 3) uint8 RGB picture.
    """
    result = _result_for_task(prediction, task)
    if isinstance(result, InstanceResult):
        visualizer = Visualizer(image_rgb, metadata, instance_mode=ColorMode.SEGMENTATION)
        output = visualizer.draw_instance_predictions(_to_instances(result, image_rgb.shape[:2]))
    elif isinstance(result, PanopticResult):
        visualizer = Visualizer(image_rgb, metadata, instance_mode=ColorMode.SEGMENTATION)
        output = visualizer.draw_panoptic_seg(
            torch.from_numpy(result.segment_ids), _segments_info(result)
        )
    else:
        visualizer = Visualizer(image_rgb, metadata)
        output = visualizer.draw_sem_seg(result.label_map)
    return output.get_image()


class VideoPredictionDrawer:
    """Draws the frames of a video with colours that stay with an object across frames."""

    def __init__(self, metadata: Metadata, task: str):
        """
        Args:
            metadata: see :func:`display_metadata`.
            task: "panoptic", "instance" or "semantic".
        """
        self._visualizer = VideoVisualizer(metadata, instance_mode=ColorMode.IMAGE)
        self._task = task

    def draw(self, frame_rgb: np.ndarray, prediction: Prediction) -> np.ndarray:
        """(H, W, 3) uint8 RGB frame -> (H, W, 3) uint8 RGB picture."""
        result = _result_for_task(prediction, self._task)
        if isinstance(result, InstanceResult):
            output = self._visualizer.draw_instance_predictions(
                frame_rgb, _to_instances(result, frame_rgb.shape[:2])
            )
        elif isinstance(result, PanopticResult):
            output = self._visualizer.draw_panoptic_seg_predictions(
                frame_rgb, torch.from_numpy(result.segment_ids), _segments_info(result)
            )
        else:
            output = self._visualizer.draw_sem_seg(frame_rgb, result.label_map)
        return output.get_image()


def _overlay_tracks(
    frame_rgb: np.ndarray,
    metadata: Metadata,
    masks: Sequence[Any],
    labels: Sequence[str],
    tracks: Sequence[int],
) -> np.ndarray:
    """Overlay ``masks`` (binary (H, W) arrays, polygons or RLE), mask ``i`` labelled
    ``labels[i]`` in the colour of track ``tracks[i]``: track ``d`` in the ``d``-th colour of
    Detectron2's palette, so that an object keeps its colour in every frame."""
    visualizer = Visualizer(frame_rgb, metadata, instance_mode=ColorMode.IMAGE)
    palette = colormap(rgb=True, maximum=1)
    output = visualizer.overlay_instances(
        masks=list(masks),
        labels=list(labels),
        assigned_colors=[palette[d % len(palette)] for d in tracks],
    )
    return output.get_image()


def draw_tracks(frame_rgb: np.ndarray, prediction: Prediction, metadata: Metadata) -> np.ndarray:
    """Draw one frame of a video model's tracks (``VideoPrediction.frame``), track ``d`` in
    the ``d``-th colour of Detectron2's palette in every frame, labelled "class score".

    Args:
        frame_rgb: (H, W, 3) uint8 RGB frame.
        prediction: the frame's prediction; its instances are the tracks, in track order,
            empty masks included (not drawn).
        metadata: see :func:`display_metadata`.

    Returns:
        (H, W, 3) uint8 RGB picture.
    """
    tracks = prediction.instances
    shown = [d for d in range(len(tracks)) if tracks.masks[d].any()]
    return _overlay_tracks(
        frame_rgb,
        metadata,
        masks=[tracks.masks[d] for d in shown],
        labels=[f"{tracks.class_names[d]} {tracks.scores[d]:.0%}" for d in shown],
        tracks=shown,
    )


def video_track_ids(record: Dict[str, Any]) -> List[int]:
    """The track ids ("id") of a video's dataset dict, in the order of their first appearance
    (frame by frame, then in annotation order): track ``video_track_ids(record)[d]`` is drawn
    in the ``d``-th colour."""
    return list(
        dict.fromkeys(entry["id"] for frame in record.get("annotations") or [] for entry in frame)
    )


def draw_video_annotations(
    frame_rgb: np.ndarray,
    frame_annotations: Sequence[Dict[str, Any]],
    track_ids: Sequence[int],
    metadata: Metadata,
) -> np.ndarray:
    """Draw one frame's ground truth of a video dataset dict: each instance's segmentation
    (RLE or polygons) in its track's colour, labelled "class #track id".

    Args:
        frame_rgb: (H, W, 3) uint8 RGB frame ``record["file_names"][t]``.
        frame_annotations: ``record["annotations"][t]``, entries with "id", "category_id"
            (contiguous) and "segmentation".
        track_ids: :func:`video_track_ids` of the record (the colour order).
        metadata: the data set's metadata (``thing_classes`` names the contiguous ids).

    Returns:
        (H, W, 3) uint8 RGB picture.
    """
    names = metadata.get("thing_classes", None) or []

    def name(category: int) -> str:
        return str(names[category]) if 0 <= category < len(names) else f"class {category}"

    return _overlay_tracks(
        frame_rgb,
        metadata,
        masks=[entry["segmentation"] for entry in frame_annotations],
        labels=[f"{name(e['category_id'])} #{e['id']}" for e in frame_annotations],
        tracks=[track_ids.index(entry["id"]) for entry in frame_annotations],
    )


def draw_video_training_sample(
    sample: Dict[str, Any], metadata: Metadata, input_format: str
) -> List[np.ndarray]:
    """Draw a training clip as the video model trains on it: each augmented frame with the
    target masks of the instances present in it (``gt_ids`` not -1), instance ``m`` of the
    clip in the ``m``-th colour in every frame, labelled with its class.

    Args:
        sample: the video training mapper's output: "image" (T tensors (3, H, W)) and
            "instances" (T Instances with gt_classes, gt_ids, gt_masks (M, H, W)).
        metadata: see :func:`display_metadata` (the targets' classes are the model's).
        input_format: INPUT.FORMAT, the channel order of the frames.

    Returns:
        T (H, W, 3) uint8 RGB pictures.
    """
    pictures = []
    for image, instances in zip(sample["image"], sample["instances"]):
        frame = convert_image_to_rgb(image.permute(1, 2, 0).cpu().numpy(), input_format)
        masks = instances.gt_masks
        masks = masks.tensor if isinstance(masks, BitMasks) else torch.as_tensor(masks)
        present = (instances.gt_ids != -1).nonzero().flatten().tolist()
        classes = instances.gt_classes.tolist()
        pictures.append(
            _overlay_tracks(
                frame,
                metadata,
                masks=[masks[m].cpu().numpy().astype(np.uint8) for m in present],
                labels=[metadata.thing_classes[classes[m]] for m in present],
                tracks=present,
            )
        )
    return pictures


# The keys of a data set record that hold each task's ground truth (Detectron2's format).
ANNOTATION_KEYS = {
    "panoptic": ("pan_seg_file_name", "segments_info"),
    "instance": ("annotations",),
    "semantic": ("sem_seg_file_name",),
}


def annotation_tasks(record: Dict[str, Any]) -> List[str]:
    """The tasks whose ground truth ``record`` holds, most complete first (panoptic,
    instance, semantic)."""
    return [
        task
        for task, keys in ANNOTATION_KEYS.items()
        if all(record.get(key) is not None for key in keys)
    ]


def draw_annotations(
    image_rgb: np.ndarray, record: Dict[str, Any], task: str, metadata: Metadata
) -> np.ndarray:
    """Draw one task's ground truth of a data set record over its image, as Detectron2's
    ``Visualizer.draw_dataset_dict`` does (which would draw every task it finds on top of
    each other).

    Args:
        image_rgb: (H, W, 3) uint8 RGB image of ``record["file_name"]``.
        record: a record of ``DatasetCatalog.get(name)``.
        task: one of :func:`annotation_tasks` of the record.
        metadata: the data set's metadata (its ids are the record's).

    Raises:
        ValueError: the record has no ground truth for ``task``.
    """
    if task not in annotation_tasks(record):
        raise ValueError(
            f"{record.get('file_name')}: no {task} ground truth "
            f"({', '.join(ANNOTATION_KEYS[task])}); it has: "
            f"{', '.join(annotation_tasks(record)) or 'none'}"
        )
    only_task = {key: record[key] for key in ANNOTATION_KEYS[task]}
    mode = ColorMode.IMAGE if task == "semantic" else ColorMode.SEGMENTATION
    visualizer = Visualizer(image_rgb, metadata, instance_mode=mode)
    return visualizer.draw_dataset_dict(only_task).get_image()


def draw_training_sample(
    sample: Dict[str, Any], metadata: Metadata, input_format: str, ignore_label: Optional[int]
) -> np.ndarray:
    """Draw a sample as the model trains on it: the dataset mapper's augmented, padded image,
    its target masks with their class names, the ignored pixels (semantic label
    ``ignore_label``) in white and the padding in black.

    Args:
        sample: the training dataset mapper's output ("image", "instances", and where the
            mapper makes them "sem_seg" and "padding_mask").
        metadata: see :func:`display_metadata` (the targets' classes are the model's).
        input_format: INPUT.FORMAT, the channel order of ``sample["image"]``.
        ignore_label: the semantic ignore label, or None.

    Returns:
        (H, W, 3) uint8 RGB picture of the image's padded size.
    """
    image = convert_image_to_rgb(sample["image"].permute(1, 2, 0).cpu().numpy(), input_format)
    visualizer = Visualizer(image, metadata, instance_mode=ColorMode.SEGMENTATION)
    instances = sample.get("instances")
    if instances is not None and len(instances) > 0:
        masks = instances.gt_masks
        masks = masks.tensor if isinstance(masks, BitMasks) else torch.as_tensor(masks)
        classes = instances.gt_classes.tolist()
        visualizer.overlay_instances(
            masks=masks.cpu().numpy().astype(np.uint8),
            labels=[metadata.thing_classes[c] for c in classes],
            assigned_colors=[np.asarray(metadata.thing_colors[c]) / 255 for c in classes],
        )
    padding = sample.get("padding_mask")
    padding = padding.cpu().numpy().astype(bool) if padding is not None else None
    sem_seg = sample.get("sem_seg")
    if sem_seg is not None and ignore_label is not None:
        ignored = sem_seg.cpu().numpy() == ignore_label
        if padding is not None:
            ignored &= ~padding
        if ignored.any():
            visualizer.draw_binary_mask(ignored, color="white", alpha=0.6, text="ignored")
    if padding is not None and padding.any():
        visualizer.draw_binary_mask(padding, color="black", alpha=0.8)
    return visualizer.output.get_image()
