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

By default the model sees the whole video at once (as the official release's video demo
does), so its memory grows with the number of frames: cut long videos with ``max_frames``, or
set ``MODEL.MASK_FORMER.TEST.CLIP_LENGTH`` to run them in clips linked into tracks. A video
file is read one frame at a time (in clips only one clip's frames are held); the masks are
made at the frame size when asked for, a frame (``frame``) or a track (``track_masks``) at a
time.

Shapes: D: tracks (instances followed through the clip), L: frames, H, W: the frame size.
"""

import itertools
import os
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.structures import BitMasks

from .data import is_video_config
from .modeling.meta_arch.video_clips import VideoTracks
from .predictor import Predictor, precision_autocast
from .utils.image_io import ImageSource
from .utils.results import InstanceResult, Prediction
from .utils.video_io import decoded_frames, open_video

__all__ = ["VideoPrediction", "VideoPredictor"]


class VideoPrediction:
    """The tracks a video model found in a clip, sorted by decreasing score.

    Made from dense masks (``masks``) or, as :class:`VideoPredictor` makes it, from the
    model's low-resolution track logits (``tracks``), whose masks are resized to the frame
    size when asked for: memory then does not grow by D * L * H * W bytes.

    Attributes:
        frame_size: (H, W) of the frames.
        scores: (D,) float32 confidences in [0, 1].
        classes: (D,) int64 contiguous class indices.
        class_names: D class names.
    """

    def __init__(
        self,
        frame_size: Tuple[int, int],
        masks: Optional[np.ndarray] = None,
        scores: Optional[np.ndarray] = None,
        classes: Optional[np.ndarray] = None,
        class_names: Optional[List[str]] = None,
        *,
        tracks: Optional[VideoTracks] = None,
    ):
        """
        Args:
            frame_size: (H, W) of the frames.
            masks: (D, L, H, W) bool; or None with ``tracks``.
            scores, classes, class_names: per track, see the class attributes.
            tracks: the model's tracks (``VideoMaskFormer.track_video``), in the order of
                ``scores``, instead of ``masks``.
        """
        if (masks is None) == (tracks is None):
            raise ValueError("VideoPrediction takes masks or tracks, one of them.")
        if scores is None or classes is None or class_names is None:
            raise ValueError("VideoPrediction needs scores, classes and class_names.")
        self.frame_size = tuple(frame_size)
        self.scores = np.asarray(scores, dtype=np.float32)
        self.classes = np.asarray(classes, dtype=np.int64)
        self.class_names = list(class_names)
        self._masks = None if masks is None else np.asarray(masks, dtype=bool)
        self._tracks = tracks
        count = len(self._masks) if tracks is None else len(tracks)
        if not len(self.scores) == len(self.classes) == len(self.class_names) == count:
            raise ValueError(
                f"VideoPrediction: {count} tracks but {len(self.scores)} scores, "
                f"{len(self.classes)} classes and {len(self.class_names)} class names."
            )

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def __repr__(self) -> str:
        return (
            f"VideoPrediction({len(self)} tracks, {self.num_frames} frames of "
            f"{self.frame_size[0]} x {self.frame_size[1]}, classes {self.class_names})"
        )

    @property
    def num_frames(self) -> int:
        return int(self._masks.shape[1] if self._tracks is None else self._tracks.num_frames)

    @property
    def masks(self) -> np.ndarray:
        """(D, L, H, W) bool, every track in every frame; a track may be empty in some frames.

        Made on each access when the prediction holds tracks: D * L * H * W bytes (a long
        video's do not fit in memory: use :meth:`frame` or :meth:`track_masks`)."""
        if self._tracks is None:
            return self._masks
        masks = np.zeros((len(self), self.num_frames, *self.frame_size), dtype=bool)
        for track in range(len(self)):
            masks[track] = self.track_masks(track)
        return masks

    def track_masks(self, track: int, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """(stop - start, H, W) bool: track ``track`` in frames ``start`` to ``stop``."""
        if self._tracks is None:
            return self._masks[track, start:stop]
        return self._tracks.track_masks(track, start, stop).numpy()

    def frame(self, index: int) -> Prediction:
        """Frame ``index`` as an image :class:`Prediction`: every track, in the same order in
        every frame (so track ``d`` is ``instances`` entry ``d``), also where it is empty."""
        if self._tracks is None:
            masks = self._masks[:, index]
        else:
            masks = self._tracks.frame_masks(index)
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
        tracks = None if self._tracks is None else self._tracks.select(torch.from_numpy(keep))
        return VideoPrediction(
            frame_size=self.frame_size,
            masks=None if self._masks is None else self._masks[keep],
            scores=self.scores[keep],
            classes=self.classes[keep],
            class_names=[self.class_names[i] for i in keep],
            tracks=tracks,
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

    def predict_arrays(self, frames: Iterable[np.ndarray]) -> VideoPrediction:
        """Run the model on the frames of one video, already read by :meth:`read`.

        Args:
            frames: L >= 1 (H, W, 3) uint8 arrays in INPUT.FORMAT, all of one size (a list,
                or an iterator: each is resized as it comes, and only the resized frames the
                model has not run yet are held).

        Raises:
            ValueError: no frames, or frames of different sizes.
        """
        frames = iter(frames)
        first = next(frames, None)
        if first is None:
            raise ValueError("VideoPredictor: the clip has no frames.")
        height, width = first.shape[:2]
        transform = self.resize.get_transform(first)  # the same resize for every frame

        def model_frames() -> Iterator[torch.Tensor]:
            for index, frame in enumerate(itertools.chain([first], frames)):
                if frame.shape[:2] != (height, width):
                    raise ValueError(
                        f"VideoPredictor: the frames of a clip must have one size; frame "
                        f"{index} is {frame.shape[1]} x {frame.shape[0]}, frame 0 "
                        f"{width} x {height}."
                    )
                resized = np.ascontiguousarray(transform.apply_image(frame).transpose(2, 0, 1))
                yield torch.as_tensor(resized)

        with precision_autocast(self.precision, self.device.type):
            tracks = self.model.track_video(model_frames(), (height, width))
        classes = tracks.labels.numpy()
        return VideoPrediction(  # the tracks' scores come sorted, descending
            frame_size=(height, width),
            scores=tracks.scores.numpy(),
            classes=classes,
            class_names=[self.class_names[int(c)] for c in classes],
            tracks=tracks,
        ).filter(self.score_threshold)

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
            mask2former.utils.ImageReadError: a frame or the video cannot be read (a
                VideoReadError for a video file).
        """
        if not isinstance(video, (str, os.PathLike)):
            return self.predict_arrays(
                self.read(frame) for frame in itertools.islice(video, max_frames)
            )
        path = os.fspath(video)
        capture = open_video(path)
        try:
            return self.predict_arrays(decoded_frames(capture, path, self.input_format, max_frames))
        finally:
            capture.release()
