"""``ytvis``: clips of a video, with the instances tracked across their frames.

Shapes: T frames of a clip, M instances of a clip, H, W frame height and width after
augmentation.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances

from .augmentations import build_video_augmentations
from .build import MASK_FORMER_MAPPER_REGISTRY
from .target_utils import annotation_to_mask

__all__ = ["YTVISDatasetMapper", "sample_frame_indices"]

# value of the pixels a frame is padded with to the size of the largest frame of its clip
_IMAGE_PAD_VALUE = 128


def sample_frame_indices(
    length: int, num_frames: int, frame_range: int, shuffle: bool
) -> List[int]:
    """Frames of a training clip, drawn with ``np.random``.

    A reference frame is drawn uniformly; the ``num_frames - 1`` others are drawn with
    replacement among the frames at most ``frame_range`` before or after it, the reference
    excluded (the reference repeated when there is none). The clip is in time order, or
    shuffled with ``shuffle``.
    """
    reference = int(np.random.randint(length))
    start, end = max(0, reference - frame_range), min(length, reference + frame_range + 1)
    candidates = [i for i in range(start, end) if i != reference]
    if candidates:
        others = np.random.choice(candidates, num_frames - 1).tolist()
    else:
        others = [reference] * (num_frames - 1)
    indices = sorted([reference] + [int(i) for i in others])
    if shuffle:
        np.random.shuffle(indices)
    return indices


@MASK_FORMER_MAPPER_REGISTRY.register()
class YTVISDatasetMapper:
    """Maps a video's dataset dict (:mod:`mask2former.data.datasets.ytvis`) to a model input.

    Training output: "video_id", "height", "width", "length", "file_names" (the T sampled
    frames), "frame_indices" (T ints), "image" (T tensors (3, H, W) uint8 in ``INPUT.FORMAT``),
    "instances" (T Instances with gt_classes (M,) int64, gt_ids (M,) int64 and gt_masks
    BitMasks (M, H, W)): the M instances are those, not crowd, that appear in any sampled frame,
    in the same order in every frame; where one is absent or augmented away its gt_ids entry
    is -1 and its mask empty. All frames of a clip have one size: frames that per-frame
    augmentations resized differently are padded (bottom/right) to the largest.

    Inference output: the same without "instances", for all L frames ("frame_indices" is
    0..L-1); "height" and "width" stay the original size.

    Augmentations drawn once per clip (see
    :func:`~mask2former.data.dataset_mappers.augmentations.build_video_augmentations`) make the
    same random draws for every frame: the ``np.random`` state before the first frame's draw
    is replayed for the others (Detectron2's augmentations draw from ``np.random``), so frames
    of one size get the same transform.
    """

    # INPUT.DATASET_MAPPER_NAME of the official configs
    dataset_mapper_name = "ytvis"
    # the metadata that lists the classes of MODEL.SEM_SEG_HEAD.NUM_CLASSES
    class_names_key = "thing_classes"

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[Tuple[T.Augmentation, bool]],
        image_format: str,
        sampling_frame_num: int,
        sampling_frame_range: int,
        sampling_frame_shuffle: bool,
        num_classes: Optional[int] = None,
    ):
        """
        Args:
            is_train: sample a clip with random augmentations, or take every frame, resized.
            augmentations: (augmentation, drawn once per clip) pairs, applied in order.
            image_format: ``INPUT.FORMAT``.
            sampling_frame_num: frames per training clip (``INPUT.SAMPLING_FRAME_NUM``).
            sampling_frame_range: ``INPUT.SAMPLING_FRAME_RANGE`` (see
                :func:`sample_frame_indices`).
            sampling_frame_shuffle: ``INPUT.SAMPLING_FRAME_SHUFFLE``.
            num_classes: ``MODEL.SEM_SEG_HEAD.NUM_CLASSES``; a ground-truth class outside
                [0, num_classes) raises ValueError. None: no check.
        """
        if sampling_frame_num < 1:
            raise ValueError(
                f"INPUT.SAMPLING_FRAME_NUM must be at least 1, got {sampling_frame_num}."
            )
        self.is_train = is_train
        self.augmentations = augmentations
        self.image_format = image_format
        self.sampling_frame_num = sampling_frame_num
        self.sampling_frame_range = sampling_frame_range
        self.sampling_frame_shuffle = sampling_frame_shuffle
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict:
        return {
            "is_train": is_train,
            "augmentations": build_video_augmentations(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "sampling_frame_num": cfg.INPUT.SAMPLING_FRAME_NUM,
            "sampling_frame_range": cfg.INPUT.SAMPLING_FRAME_RANGE,
            "sampling_frame_shuffle": cfg.INPUT.SAMPLING_FRAME_SHUFFLE,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        }

    def __call__(self, dataset_dict: Dict) -> Dict:
        """
        Args:
            dataset_dict: one video in the format of :func:`load_ytvis_json`.

        Returns:
            a new dict with the outputs listed in the class docstring.
        """
        length = dataset_dict["length"]
        if self.is_train:
            indices = sample_frame_indices(
                length,
                self.sampling_frame_num,
                self.sampling_frame_range,
                self.sampling_frame_shuffle,
            )
        else:
            indices = list(range(length))
        file_names = [dataset_dict["file_names"][i] for i in indices]
        frames = [self._read_frame(dataset_dict, name) for name in file_names]
        images, transforms = self._augment_clip(frames)
        out = {key: dataset_dict[key] for key in ("video_id", "height", "width", "length")}
        out["file_names"] = file_names
        out["frame_indices"] = indices
        size = (max(i.shape[0] for i in images), max(i.shape[1] for i in images))
        out["image"] = [_pad(_to_tensor(image), size, _IMAGE_PAD_VALUE) for image in images]
        if self.is_train:
            frame_annotations = [dataset_dict.get("annotations", [[]] * length)[i] for i in indices]
            out["instances"] = self._clip_instances(
                frame_annotations, frames, transforms, size, file_names[0]
            )
        return out

    def _read_frame(self, dataset_dict: Dict, file_name: str) -> np.ndarray:
        """(H, W, 3) frame in ``image_format``; errors name the file."""
        try:
            image = utils.read_image(file_name, format=self.image_format)
        # readers raise many types (OSError, ValueError, SyntaxError, ...) for broken files
        except Exception as error:
            raise OSError(f"Frame {file_name} cannot be read ({error})") from error
        expected = (dataset_dict["height"], dataset_dict["width"])
        if image.shape[:2] != expected:
            raise ValueError(
                f"Frame {file_name} is {image.shape[1]}x{image.shape[0]} pixels, but its video "
                f"{dataset_dict['video_id']} is {expected[1]}x{expected[0]} (the JSON's "
                "width and height)."
            )
        return image

    def _augment_clip(
        self, frames: Sequence[np.ndarray]
    ) -> Tuple[List[np.ndarray], List[T.TransformList]]:
        """Augment each frame; per-clip augmentations replay the first frame's random draws.

        Returns:
            the augmented frames and the transforms applied to each.
        """
        clip_states: Dict[int, tuple] = {}
        images, transforms = [], []
        for frame in frames:
            aug_input = T.AugInput(frame)
            applied = []
            for index, (augmentation, by_clip) in enumerate(self.augmentations):
                if by_clip and index in clip_states:
                    after = np.random.get_state()
                    np.random.set_state(clip_states[index])
                    applied.append(augmentation(aug_input))
                    np.random.set_state(after)
                else:
                    if by_clip:
                        clip_states[index] = np.random.get_state()
                    applied.append(augmentation(aug_input))
            images.append(aug_input.image)
            transforms.append(T.TransformList(applied))
        return images, transforms

    def _clip_instances(
        self,
        frame_annotations: Sequence[List[Dict]],
        frames: Sequence[np.ndarray],
        transforms: Sequence[T.TransformList],
        size: Tuple[int, int],
        source: str,
    ) -> List[Instances]:
        """One Instances per frame over the same M instances (see the class docstring)."""
        track_ids: List[int] = []
        classes: Dict[int, int] = {}
        for annotations in frame_annotations:
            for ann in annotations:
                if not ann.get("iscrowd", 0) and ann["id"] not in classes:
                    track_ids.append(ann["id"])
                    classes[ann["id"]] = ann["category_id"]
        self._check_classes(list(classes.values()), source)
        gt_classes = torch.tensor([classes[i] for i in track_ids], dtype=torch.int64)
        position = {track_id: k for k, track_id in enumerate(track_ids)}
        out = []
        for annotations, frame, transform in zip(frame_annotations, frames, transforms):
            masks = torch.zeros((len(track_ids), *size), dtype=torch.bool)
            ids = torch.full((len(track_ids),), -1, dtype=torch.int64)
            for ann in annotations:
                if ann.get("iscrowd", 0):
                    continue
                mask = annotation_to_mask(ann["segmentation"], *frame.shape[:2])
                mask = torch.as_tensor(transform.apply_segmentation(mask) == 1)
                k = position[ann["id"]]
                masks[k, : mask.shape[0], : mask.shape[1]] = mask
                if mask.any():
                    ids[k] = ann["id"]
            instances = Instances(size)
            instances.gt_classes = gt_classes.clone()
            instances.gt_ids = ids
            instances.gt_masks = BitMasks(masks)
            out.append(instances)
        return out

    def _check_classes(self, classes: List[int], source: str) -> None:
        if self.num_classes is None:
            return
        outside = sorted({c for c in classes if not 0 <= c < self.num_classes})
        if outside:
            raise ValueError(
                f"The video of {source}: ground-truth classes {outside} are outside "
                f"0..{self.num_classes - 1} (MODEL.SEM_SEG_HEAD.NUM_CLASSES = "
                f"{self.num_classes}). Does the config's number of classes match the data set?"
            )


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, C) array -> (C, H, W) tensor."""
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))


def _pad(image: torch.Tensor, size: Tuple[int, int], value: int) -> torch.Tensor:
    """Pad (C, H, W) bottom/right to ``size``."""
    height, width = image.shape[-2:]
    if (height, width) == tuple(size):
        return image
    return F.pad(image, [0, size[1] - width, 0, size[0] - height], value=value)
