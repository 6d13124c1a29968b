"""Python API: run a video instance segmentation model (VideoMaskFormer) on a video.

Example::

    from mask2former import VideoPredictor

    predictor = VideoPredictor(
        "configs/youtubevis_2019/video_maskformer2_R50_bs16_8ep.yaml", "model_final.pkl"
    )
    prediction = predictor("clip.mp4")            # a video file, or a list of frames
    for track in range(len(prediction)):
        print(prediction.class_names[track], prediction.scores[track])
    first_frame = prediction.frame(0)             # a Prediction, as Predictor returns

The model sees the whole clip at once (as the official release's video demo does), so its
memory grows with the number of frames: cut long videos with ``max_frames``.

Shapes: D: tracks (instances followed through the clip), L: frames, H, W: the frame size.
"""

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.structures import BitMasks

from .data import is_video_config
from .predictor import Predictor, precision_autocast
from .utils.image_io import ImageSource
from .utils.results import InstanceResult, Prediction
from .utils.video_io import read_video

__all__ = ["VideoPrediction", "VideoPredictor"]


@dataclass
class VideoPrediction:
    """The tracks a video model found in a clip, sorted by decreasing score.

    Attributes:
        frame_size: (H, W) of the frames.
        masks: (D, L, H, W) bool; a track may be empty in some frames.
        scores: (D,) float32 confidences in [0, 1].
        classes: (D,) int64 contiguous class indices.
        class_names: D class names.
    """

    frame_size: Tuple[int, int]
    masks: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    class_names: List[str]

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.masks.shape[1])

    def frame(self, index: int) -> Prediction:
        """Frame ``index`` as an image :class:`Prediction`: every track, in the same order in
        every frame (so track ``d`` is ``instances`` entry ``d``), also where it is empty."""
        masks = self.masks[:, index]
        boxes = BitMasks(torch.from_numpy(masks)).get_bounding_boxes().tensor.numpy()
        instances = InstanceResult(
            masks=masks,
            boxes=boxes.astype(np.float32),
            scores=self.scores,
            classes=self.classes,
            class_names=list(self.class_names),
        )
        return Prediction(image_size=self.frame_size, instances=instances)

    def filter(self, score_threshold: float) -> "VideoPrediction":
        """The tracks whose score is at least ``score_threshold``."""
        keep = np.flatnonzero(self.scores >= score_threshold)
        return VideoPrediction(
            frame_size=self.frame_size,
            masks=self.masks[keep],
            scores=self.scores[keep],
            classes=self.classes[keep],
            class_names=[self.class_names[i] for i in keep],
        )


class VideoPredictor(Predictor):
    """A :class:`Predictor` for video instance segmentation configs (``VideoMaskFormer``,
    e.g. ``configs/youtubevis_2019/*.yaml``): the frames of a clip go through the model
    together and come back as tracks.

    Takes the arguments of :class:`Predictor` except ``backend`` (PyTorch only), ``tasks``
    (instance only) and ``return_probabilities``. The frames are resized like the images of
    :class:`Predictor` (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST) and the masks come back at the
    frame size.

    Raises:
        ValueError: the config is not a video model's (use :class:`Predictor`), or an
            argument that does not apply to video was given.
    """

    def __init__(self, cfg_or_path, weights=None, **kwargs):
        for name in ("backend", "tasks", "return_probabilities"):
            if name in kwargs:
                raise ValueError(f"VideoPredictor does not take {name!r}.")
        super().__init__(cfg_or_path, weights, **kwargs)
        if not is_video_config(self.cfg):
            raise ValueError(
                f"MODEL.META_ARCHITECTURE is {self.cfg.MODEL.META_ARCHITECTURE!r}, an image "
                "model: use mask2former.Predictor (VideoPredictor runs VideoMaskFormer configs)."
            )

    @torch.no_grad()
    def predict_arrays(self, frames: Sequence[np.ndarray]) -> VideoPrediction:
        """Run the model on the frames of one clip, already read by :meth:`read`.

        Args:
            frames: L >= 1 (H, W, 3) uint8 arrays in INPUT.FORMAT, all of one size.

        Raises:
            ValueError: no frames, or frames of different sizes.
        """
        if not frames:
            raise ValueError("VideoPredictor: the clip has no frames.")
        sizes = {frame.shape[:2] for frame in frames}
        if len(sizes) > 1:
            raise ValueError(
                f"VideoPredictor: the frames of a clip must have one size, got {sorted(sizes)}."
            )
        height, width = frames[0].shape[:2]
        transform = self.resize.get_transform(frames[0])  # the same resize for every frame
        images = [
            torch.as_tensor(np.ascontiguousarray(transform.apply_image(f).transpose(2, 0, 1)))
            for f in frames
        ]
        inputs = {
            "image": [image.to(self.device, torch.float32) for image in images],
            "height": height,
            "width": width,
        }
        with precision_autocast(self.precision, self.device.type):
            (output,) = self.model([inputs])
        scores = np.asarray(output["pred_scores"], dtype=np.float32)
        classes = np.asarray(output["pred_labels"], dtype=np.int64)
        if len(scores):
            masks = torch.stack([m.to("cpu", torch.bool) for m in output["pred_masks"]]).numpy()
        else:
            masks = np.zeros((0, len(frames), height, width), dtype=bool)
        order = np.argsort(-scores, kind="stable")
        order = order[scores[order] >= self.score_threshold]
        return VideoPrediction(
            frame_size=(height, width),
            masks=masks[order],
            scores=scores[order],
            classes=classes[order],
            class_names=[self.class_names[int(c)] for c in classes[order]],
        )

    def __call__(
        self,
        video: Union[str, os.PathLike, Sequence[ImageSource]],
        max_frames: Optional[int] = None,
    ) -> VideoPrediction:
        """Predict on a video file or on a clip's frames.

        Args:
            video: the path of a video file, or a list of frames (paths, (H, W[, 3]) arrays
                in ``array_channel_order``, PIL images).
            max_frames: use only the first ``max_frames`` frames.

        Raises:
            mask2former.utils.ImageReadError: a frame or the video cannot be read.
        """
        if isinstance(video, (str, os.PathLike)):
            frames = read_video(os.fspath(video), self.input_format, max_frames).frames
        else:
            frames = [self.read(frame) for frame in list(video)[:max_frames]]
        return self.predict_arrays(frames)
