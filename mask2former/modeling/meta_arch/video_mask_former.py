"""The Mask2Former meta-architecture for video instance segmentation (Mask2Former for video,
Cheng et al. 2021): one set of (class, mask track) predictions per video.

Shape legend:
    N: videos in the batch, T: frames of a training clip, L: frames of a video at inference,
    Q: queries, K: classes (without "no object"), D: detections of a video,
    M: ground-truth instances of a clip, H, W: output (original frame) size.
"""

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList, Instances
from torch import Tensor

from ..postprocessing import instance_queries
from .mask_former import MaskFormer
from .video_clips import RESIZE_FRAMES, TrackLinker, VideoTracks, binary_mask_frames

__all__ = ["VideoMaskFormer", "RESIZE_FRAMES"]


_NO_SLIDING_WINDOW = (
    "VideoMaskFormer: MODEL.MASK_FORMER.TEST.SLIDING_WINDOW is for image models; set its "
    "ENABLED False for a video model."
)


@META_ARCH_REGISTRY.register()
class VideoMaskFormer(MaskFormer):
    """Mask classification of videos: each query predicts a class and a mask in every frame.

    Input: a list of dicts, one per video, in the video dataset mappers' format:
    "image" a list of frames (3, H_in, W_in) in INPUT.FORMAT, all of one size. Training:
    clips of ``num_frames`` frames with "instances", one detectron2 Instances per frame
    (``gt_classes`` (M,), ``gt_ids`` (M,), ``gt_masks`` BitMasks or (M, H_in, W_in)), the
    same M instances in the same order in every frame, ``gt_ids`` -1 where an instance is
    absent; returns the weighted losses. Inference: all L frames of each video, with the
    output "height"/"width" (default: the frame size); videos are processed one at a time,
    the decoder seeing the whole video at once (or, for a video longer than ``clip_length``,
    clips linked into tracks: :meth:`track_video`), and each gives
    ``{"image_size": (H, W), "pred_scores": [float] * D, "pred_labels": [int] * D,
    "pred_masks": [(L, H, W) bool CPU tensor] * D}``, sorted by descending score.

    Of MaskFormer's inference options only ``mask_threshold`` is used (besides the pre-
    processing ones); the semantic, panoptic and instance flags are ignored.
    """

    @configurable
    def __init__(
        self,
        *,
        num_frames: int,
        detections_per_video: int,
        frames_per_pass: int = 0,
        clip_length: int = 0,
        clip_overlap: int = 0,
        **kwargs,
    ):
        """
        Args:
            num_frames: frames of a training clip (INPUT.SAMPLING_FRAME_NUM).
            detections_per_video: D, (query, class) pairs returned per video, the highest
                class probabilities (MODEL.MASK_FORMER.TEST.DETECTIONS_PER_VIDEO).
            frames_per_pass: at inference, frames run through the backbone and the pixel
                decoder together (MODEL.MASK_FORMER.TEST.FRAMES_PER_PASS); 0: all.
            clip_length: at inference, a video longer than this goes through the transformer
                decoder in clips of this many frames, linked into tracks (see
                :mod:`.video_clips`; MODEL.MASK_FORMER.TEST.CLIP_LENGTH); 0: the whole
                video at once, as in the official release.
            clip_overlap: frames shared by consecutive clips, < ``clip_length``
                (MODEL.MASK_FORMER.TEST.CLIP_OVERLAP); their features are computed once.
            kwargs: the arguments of :class:`MaskFormer`, without ``sliding_window``.
        """
        if kwargs.get("sliding_window") is not None:
            raise ValueError(_NO_SLIDING_WINDOW)
        super().__init__(**kwargs)
        if frames_per_pass < 0:
            raise ValueError(
                "VideoMaskFormer: MODEL.MASK_FORMER.TEST.FRAMES_PER_PASS must be >= 0 (0: all "
                f"frames at once), got {frames_per_pass}."
            )
        self.frames_per_pass = frames_per_pass
        if num_frames < 1:
            raise ValueError(
                f"VideoMaskFormer: INPUT.SAMPLING_FRAME_NUM must be >= 1, got {num_frames}."
            )
        if detections_per_video < 0:
            raise ValueError(
                "VideoMaskFormer: MODEL.MASK_FORMER.TEST.DETECTIONS_PER_VIDEO must be >= 0, "
                f"got {detections_per_video}."
            )
        self.num_frames = num_frames
        self.detections_per_video = detections_per_video
        if clip_length < 0 or (clip_length > 0 and not 0 <= clip_overlap < clip_length):
            raise ValueError(
                "VideoMaskFormer: MODEL.MASK_FORMER.TEST.CLIP_LENGTH must be >= 0 (0: the whole "
                "video at once) and CLIP_OVERLAP in [0, CLIP_LENGTH), got "
                f"CLIP_LENGTH {clip_length}, CLIP_OVERLAP {clip_overlap}."
            )
        self.clip_length = clip_length
        self.clip_overlap = clip_overlap

    @classmethod
    def from_config(cls, cfg) -> Dict:
        return {
            **super().from_config(cfg),
            "num_frames": cfg.INPUT.SAMPLING_FRAME_NUM,
            "detections_per_video": cfg.MODEL.MASK_FORMER.TEST.DETECTIONS_PER_VIDEO,
            "frames_per_pass": cfg.MODEL.MASK_FORMER.TEST.FRAMES_PER_PASS,
            "clip_length": cfg.MODEL.MASK_FORMER.TEST.CLIP_LENGTH,
            "clip_overlap": cfg.MODEL.MASK_FORMER.TEST.CLIP_OVERLAP,
        }

    def forward(self, batched_inputs: List[Dict]) -> object:
        """Losses (training) or per-video results (inference); see the class docstring."""
        self.check_inputs(batched_inputs)
        if self.training:
            return super().forward(batched_inputs)
        results = []
        for video in batched_inputs:
            if 0 < self.clip_length < len(video["image"]):
                height, width = video["image"][0].shape[-2:]
                output_size = (video.get("height", height), video.get("width", width))
                tracks = self.track_video(video["image"], output_size)
                results.append(self.tracks_result(tracks))
            else:
                results.extend(super().forward([video]))
        return results

    def check_inputs(self, batched_inputs: List[Dict]) -> None:
        """Raise a ValueError naming what is wrong with a video input."""
        for index, video in enumerate(batched_inputs):
            frames = video.get("image")
            if not isinstance(frames, (list, tuple)) or len(frames) == 0:
                raise ValueError(
                    f"VideoMaskFormer: input {index} needs 'image', a non-empty list of the "
                    f"video's frames (3, H, W), got {type(frames).__name__}; use a video "
                    "dataset mapper."
                )
            if not self.training:
                continue
            if len(frames) != self.num_frames:
                raise ValueError(
                    f"VideoMaskFormer: training clip {index} has {len(frames)} frames, but "
                    f"INPUT.SAMPLING_FRAME_NUM is {self.num_frames}; every clip of a batch "
                    "must have that many."
                )
            instances = video.get("instances")
            if not isinstance(instances, (list, tuple)) or len(instances) != len(frames):
                raise ValueError(
                    f"VideoMaskFormer: training clip {index} needs 'instances', a list of one "
                    f"Instances per frame ({len(frames)}), got {type(instances).__name__}; use "
                    "a video dataset mapper that produces them."
                )

    def network(self, images: Tensor) -> Dict[str, object]:
        """Backbone and pixel decoder per frame, then the transformer decoder over the frames.

        At inference the per-frame part runs ``frames_per_pass`` frames at a time and only the
        features the transformer decoder reads are kept: what the official release computes
        in one pass over all frames, with the memory of a long video growing by those
        features instead of by the backbone's activations (BENCHMARKS.md, "Video inference").
        """
        if self.training or not 0 < self.frames_per_pass < len(images):
            return super().network(images)
        multi_scale, mask_features = [], []
        for frames in images.split(self.frames_per_pass):
            levels, masks = self.sem_seg_head.pixel_features(
                self.backbone(self.backbone_input(frames))
            )
            multi_scale.append(levels)
            mask_features.append(masks)
        multi_scale = [torch.cat(level) for level in zip(*multi_scale)]
        return self.sem_seg_head.predictor(multi_scale, torch.cat(mask_features))

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise and pad all frames of all videos into one (N * T, 3, H_pad, W_pad)
        batch, the frames of a video consecutive."""
        return self.normalize_and_pad(
            [frame for video in batched_inputs for frame in video["image"]]
        )

    def prepare_targets(
        self, gt_instances: List[List[Instances]], images: ImageList
    ) -> List[Dict[str, Tensor]]:
        """Criterion targets per clip: "labels" (M',) and "masks" (M', T, H_pad, W_pad), the
        M' instances present (``gt_ids`` not -1) in at least one frame."""
        padded_size = tuple(images.tensor.shape[-2:])
        targets = []
        for index, frames in enumerate(gt_instances):
            present = self._present_instances(index, frames).to(self.device)
            masks = torch.stack([self.padded_masks(x, padded_size) for x in frames], 1)
            labels = frames[0].gt_classes.to(self.device)
            targets.append({"labels": labels[present], "masks": masks[present]})
        return targets

    def count_targets(self, batched_inputs: List[Dict]) -> int:
        """How many target instances the criterion gets for these training clips (those
        present in at least one frame), counted without running the model."""
        self.check_inputs(batched_inputs)
        clips = self.training_instances(batched_inputs)
        return sum(
            int(self._present_instances(index, frames).sum()) for index, frames in enumerate(clips)
        )

    @staticmethod
    def _present_instances(index: int, frames: List[Instances]) -> Tensor:
        """(M,) bool: which of training clip ``index``'s instances appear (``gt_ids`` not -1)
        in at least one frame; a ValueError when its frames do not list the same instances."""
        counts = [len(instances) for instances in frames]
        if len(set(counts)) > 1 or not all(instances.has("gt_ids") for instances in frames):
            raise ValueError(
                f"VideoMaskFormer: the frames of training clip {index} must list the same "
                f"instances in the same order, with 'gt_ids' (-1 where absent); got "
                f"{counts} instances."
            )
        ids = torch.stack([instances.gt_ids for instances in frames], 1)
        return (ids != -1).any(1)

    def inference(
        self, outputs: Dict, batched_inputs: List[Dict], images: ImageList
    ) -> List[Dict[str, object]]:
        """The result of ONE video (``batched_inputs`` of length 1), at its "height" x
        "width"; see :meth:`inference_video`."""
        (video,) = batched_inputs
        image_size = images.image_sizes[0]
        if any(tuple(size) != tuple(image_size) for size in images.image_sizes):
            raise ValueError(
                f"VideoMaskFormer: the frames of a video must share a size, got "
                f"{sorted(set(images.image_sizes))}."
            )
        output_size = (video.get("height", image_size[0]), video.get("width", image_size[1]))
        result = self.inference_video(
            outputs["pred_logits"][0],
            outputs["pred_masks"][0],
            tuple(images.tensor.shape[-2:]),
            image_size,
            output_size,
        )
        return [result]

    def inference_video(
        self,
        class_logits: Tensor,
        mask_logits: Tensor,
        padded_size: Tuple[int, int],
        image_size: Tuple[int, int],
        output_size: Tuple[int, int],
    ) -> Dict[str, object]:
        """The top-D (query, class) pairs of a video with their binary mask tracks.

        Class probabilities are the softmax over K + 1 without the "no object" column; the D
        pairs with the highest probability over all Q * K pairs are kept (a query may come
        with several classes), scored by that probability alone. A kept query's mask logits
        are upsampled to ``padded_size``, cropped to ``image_size`` and resized to
        ``output_size`` (bilinear; see ``resize_mask_logits``), in float32, then binarised
        where the probability is above ``mask_threshold``. Only the kept queries are
        resized, ``RESIZE_FRAMES`` frames at a time.

        Args:
            class_logits: (Q, K + 1).
            mask_logits: (Q, L, h, w).
            padded_size: (height, width) of the padded frames.
            image_size: size of the frames inside the padded ones.
            output_size: (H, W) of the masks returned.

        Returns:
            {"image_size": output_size, "pred_scores": [float] * D (descending),
            "pred_labels": [int] * D, "pred_masks": [(L, H, W) bool CPU tensor] * D}; pairs of
            the same query share one mask tensor.
        """
        scores, labels, queries = instance_queries(class_logits, self.detections_per_video)
        unique_queries, inverse = torch.unique(queries, return_inverse=True)
        masks = [
            binary_mask_frames(
                mask_logits[query],
                padded_size,
                image_size,
                output_size,
                self.mask_logit_threshold,
                self.device,
            )
            for query in unique_queries.tolist()
        ]
        return {
            "image_size": tuple(output_size),
            "pred_scores": scores.tolist(),
            "pred_labels": labels.tolist(),
            "pred_masks": [masks[i] for i in inverse.tolist()],
        }

    @property
    def mask_logit_threshold(self) -> float:
        """The logit of ``mask_threshold``: sigmoid(x) > p <=> x > logit(p), so full-size
        maps are compared as logits, without a sigmoid."""
        return torch.logit(torch.tensor(self.mask_threshold, dtype=torch.float64)).item()

    @staticmethod
    def tracks_result(tracks: VideoTracks) -> Dict[str, object]:
        """:meth:`inference_video`'s result from :meth:`track_video`'s."""
        return {
            "image_size": tracks.output_size,
            "pred_scores": tracks.scores.tolist(),
            "pred_labels": tracks.labels.tolist(),
            "pred_masks": tracks.pair_masks(),
        }

    @torch.no_grad()
    def track_video(
        self, frames: Iterable[Tensor], output_size: Optional[Tuple[int, int]] = None
    ) -> VideoTracks:
        """The tracks of one video whose frames come one at a time (from a file, say).

        With ``clip_length`` 0 all frames go through the transformer decoder together, as in
        :meth:`forward`. Otherwise in clips of ``clip_length`` frames, each sharing
        ``clip_overlap`` frames with the one before (the last clip has the frames that are
        left), linked into tracks (see :mod:`.video_clips`): the device then holds the
        features of one clip, and the host the tracks' low-resolution mask logits (float16)
        and the frames of one clip, never the whole video's. A frame of another size stops it
        when it comes, after the clips before it have run. Either way the backbone and the
        pixel decoder see ``frames_per_pass`` frames at a time.

        Args:
            frames: (3, H_in, W_in) tensors in INPUT.FORMAT (uint8 or float, any device), all
                of one size: the video's frames, resized for the model.
            output_size: (H, W) of the masks; default the frames' size.

        Returns:
            the top ``detections_per_video`` (track, class) pairs, their masks made on demand.

        Raises:
            ValueError: no frames, or frames of different sizes.
        """
        if self.training:
            raise RuntimeError("VideoMaskFormer.track_video runs in eval mode (model.eval()).")
        clip_length = self.clip_length
        linker = TrackLinker(torch.float16 if clip_length else torch.float32)
        window: List[Tuple[List[Tensor], Tensor]] = []  # per frame: (levels, mask features)
        pending: List[Tensor] = []
        sizes: Dict[str, Tuple[int, int]] = {}
        start = 0  # the video index of window[0]

        def decode() -> None:
            nonlocal window, pending, start
            window = window + self._frame_features(pending, sizes)
            pending = []
            levels = [torch.stack(level) for level in zip(*(frame[0] for frame in window))]
            outputs = self.sem_seg_head.predictor(levels, torch.stack([m for _, m in window]))
            linker.add(
                start,
                outputs["pred_logits"][0],
                outputs["pred_masks"][0],
                outputs["pred_embeddings"][0],
            )
            kept = min(self.clip_overlap, len(window))
            start += len(window) - kept
            window = window[len(window) - kept :]

        for frame in frames:
            pending.append(frame)
            if len(window) + len(pending) == clip_length:
                decode()
        if pending or linker.num_frames == 0:
            if not pending:
                raise ValueError("VideoMaskFormer.track_video: the video has no frames.")
            decode()
        return VideoTracks.from_linker(
            linker,
            self.detections_per_video,
            padded_size=sizes["padded"],
            image_size=sizes["image"],
            output_size=tuple(output_size) if output_size is not None else sizes["image"],
            threshold=self.mask_logit_threshold,
            device=self.device,
        )

    def _frame_features(
        self, frames: Sequence[Tensor], sizes: Dict[str, Tuple[int, int]]
    ) -> List[Tuple[List[Tensor], Tensor]]:
        """Backbone and pixel decoder on ``frames``, ``frames_per_pass`` at a time: per frame
        its multi-scale features and mask features. Records the padded and the frame size in
        ``sizes`` and checks that every frame has that size."""
        features = []
        step = self.frames_per_pass or len(frames)
        for first in range(0, len(frames), step):
            images = self.normalize_and_pad(list(frames[first : first + step]))
            for size in images.image_sizes:
                if tuple(size) != sizes.setdefault("image", tuple(size)):
                    raise ValueError(
                        "VideoMaskFormer: the frames of a video must share a size, got "
                        f"{sizes['image']} and {tuple(size)}."
                    )
            sizes.setdefault("padded", tuple(images.tensor.shape[-2:]))
            levels, masks = self.sem_seg_head.pixel_features(self.backbone(images.tensor))
            features.extend(
                ([level[index] for level in levels], masks[index]) for index in range(len(masks))
            )
        return features
