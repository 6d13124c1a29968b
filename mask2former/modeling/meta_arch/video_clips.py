"""Long videos clip by clip: what ``VideoMaskFormer`` keeps between clips, and its result.

Not in the official release, whose video model sees all frames of a video at once, so that
its memory grows with the video until it runs out (its users report 100-150 frames for Swin-L
on a 32 GB GPU). With
``MODEL.MASK_FORMER.TEST.CLIP_LENGTH`` the video goes through the model in clips of that many
frames, consecutive clips sharing ``CLIP_OVERLAP`` frames. Each clip's queries are linked to
the tracks of the clips before it by one assignment (Hungarian) that maximises, per (track,
query) pair, the cosine similarity of the final query embeddings (as MinVIS links frames;
Huang et al. 2022) plus the soft mask IoU of the two predictions on the shared frames. A
track's class probabilities are the mean of its clips', weighted by the clips' lengths times
the track's object probability (1 - "no object") and its mask's largest pixel probability
in each, so that the clips where its object is out of view do not dilute its score; its mask
logits on a shared frame, the mean of the clips' predictions there.

Between clips only the tracks' class probabilities, their last embeddings and the masks'
low-resolution logits (1/4 of the padded frame, float16 on the CPU) are kept, so the device
memory does not grow with the video and the host's grows by Q * h * w * 2 bytes a frame.

Shape legend: Q: queries (= tracks), K: classes (without "no object"), L: frames of the
video, T: frames of a clip, h, w: predicted mask size, H, W: output size, D: detections.
"""

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ..postprocessing import resize_mask_logits, top_class_pairs

__all__ = ["RESIZE_FRAMES", "TrackLinker", "VideoTracks", "binary_mask_frames"]

# Frames of one query's masks resized together. The resized float32 logits of these frames
# are the only full-size float intermediate (16 frames of 720 x 1280 are 59 MB), so memory
# does not grow with the length of the video beyond the results themselves.
RESIZE_FRAMES = 16

# The smallest weight of a clip's class probabilities, per frame (see TrackLinker.add).
_MIN_WEIGHT = 1e-6

# float16's largest finite value is 65504; logits beyond +-1e4 are as certain as it gets.
_FLOAT16_LIMIT = 1e4


def binary_mask_frames(
    mask_logits: Tensor,
    padded_size: Tuple[int, int],
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    threshold: float,
    device: torch.device,
) -> Tensor:
    """(L, h, w) mask logits of one track -> (L, H, W) bool on the CPU.

    Each frame's logits are upsampled to ``padded_size``, cropped to ``image_size`` and
    resized to ``output_size`` (``resize_mask_logits``) in float32 on ``device``,
    ``RESIZE_FRAMES`` frames at a time, and compared with ``threshold``, a logit.
    """
    chunks = []
    for start in range(0, len(mask_logits), RESIZE_FRAMES):
        chunk = mask_logits[start : start + RESIZE_FRAMES].to(device)
        resized = resize_mask_logits(chunk, padded_size, image_size, output_size)
        chunks.append((resized > threshold).cpu())
    if not chunks:
        return torch.zeros((0, *output_size), dtype=torch.bool)
    return torch.cat(chunks)


class TrackLinker:
    """The tracks of a video assembled from the predictions of its clips, in order.

    ``add`` takes one clip's queries; the first clip's query q starts track q, and each later
    clip's queries continue the tracks they are assigned to (see the module docstring).
    """

    def __init__(self, storage_dtype: torch.dtype = torch.float16):
        """
        Args:
            storage_dtype: dtype of the kept mask logits (on the CPU) once a second clip
                comes; those of a video of one clip stay float32, as the whole video's.
        """
        self.storage_dtype = storage_dtype
        self.frame_logits: List[Tensor] = []  # per frame (Q, h, w), tracks in order
        self.frame_counts: List[int] = []  # how many clips predicted each frame
        self.probabilities: Optional[Tensor] = None  # (Q, K), the weighted mean over clips
        self.weights: Optional[Tensor] = None  # (Q, 1), their sum
        self.embeddings: Optional[Tensor] = None  # (Q, C) of the last clip, track order
        self.orders: List[Tensor] = []  # per clip: order[t] = the clip's query of track t

    @property
    def num_frames(self) -> int:
        return len(self.frame_logits)

    def add(self, start: int, class_logits: Tensor, mask_logits: Tensor, embeddings: Tensor):
        """Link one clip's predictions to the tracks.

        Args:
            start: index of the clip's first frame in the video; from the second clip on, at
                most the number of frames seen so far (clips come in order and may overlap
                the frames before).
            class_logits: (Q, K + 1).
            mask_logits: (Q, T, h, w).
            embeddings: (Q, C) final query embeddings.
        """
        # in float32 whatever the caller's autocast: the assignment and the running means
        # compare and add probabilities (and NumPy takes no bfloat16)
        devices = {"cpu", class_logits.device.type}
        with contextlib.ExitStack() as stack:
            for device in devices:
                stack.enter_context(torch.autocast(device, enabled=False))
            self._add(start, class_logits, mask_logits, embeddings)

    def _add(self, start: int, class_logits: Tensor, mask_logits: Tensor, embeddings: Tensor):
        if not 0 <= start <= self.num_frames:
            raise ValueError(
                f"TrackLinker: a clip starting at frame {start} after {self.num_frames} frames; "
                "clips must come in order without a gap."
            )
        class_logits, embeddings = class_logits.float(), embeddings.float()
        mask_logits = mask_logits.detach().to("cpu", torch.float32)
        num_queries, clip_frames = mask_logits.shape[:2]
        shared = min(self.num_frames - start, clip_frames)
        if self.embeddings is None:
            order = torch.arange(num_queries)
        else:
            if num_queries != len(self.embeddings):
                raise ValueError(
                    f"TrackLinker: a clip with {num_queries} queries after clips with "
                    f"{len(self.embeddings)}."
                )
            order = self._assign(start, shared, mask_logits, embeddings)
            if len(self.orders) == 1:  # a second clip: from now on, the storage dtype
                self.frame_logits = [frame.to(self.storage_dtype) for frame in self.frame_logits]
        self.orders.append(order)
        device_order = order.to(class_logits.device)
        probabilities = class_logits[device_order].softmax(-1)
        # A clip where a track is "no object", or has an empty mask, says little about its
        # class: weight its clips by the object probability times the mask's largest pixel
        # probability there (and the clip's length).
        presence = mask_logits[order].flatten(1).amax(1, keepdim=True).sigmoid()
        objectness = 1 - probabilities[:, -1:]
        weight = clip_frames * (objectness * presence.to(objectness.device)).clamp_min(_MIN_WEIGHT)
        probabilities = probabilities[:, :-1]
        if self.probabilities is None:
            self.probabilities, self.weights = probabilities, weight
        else:  # the running weighted mean
            self.weights = self.weights + weight
            self.probabilities += (probabilities - self.probabilities) * (weight / self.weights)
        self.embeddings = embeddings[device_order]
        mask_logits = mask_logits[order].clamp(-_FLOAT16_LIMIT, _FLOAT16_LIMIT)
        # one clip is kept in float32, as the whole video's logits are
        dtype = torch.float32 if len(self.orders) == 1 else self.storage_dtype
        for offset in range(clip_frames):
            index = start + offset
            if offset < shared:
                count = self.frame_counts[index]
                mean = self.frame_logits[index].float()
                mean += (mask_logits[:, offset] - mean) / (count + 1)
                self.frame_logits[index] = mean.to(dtype)
                self.frame_counts[index] = count + 1
            else:
                self.frame_logits.append(mask_logits[:, offset].to(dtype))
                self.frame_counts.append(1)

    def _assign(self, start: int, shared: int, mask_logits: Tensor, embeddings: Tensor) -> Tensor:
        """(Q,) the clip's query for each track: the assignment maximising the embeddings'
        cosine similarity plus the soft mask IoU on the ``shared`` frames."""
        # imported here, as in HungarianMatcher.forward: scipy.optimize is slow to import
        from scipy.optimize import linear_sum_assignment

        previous = torch.nn.functional.normalize(self.embeddings, dim=-1)
        current = torch.nn.functional.normalize(embeddings, dim=-1)
        similarity = (previous @ current.T).cpu().float()
        if shared > 0:  # summed frame by frame: one frame's probabilities at a time
            intersection = torch.zeros_like(similarity)
            track_area = torch.zeros(len(similarity), 1)
            query_area = torch.zeros(1, len(similarity))
            for offset in range(shared):
                tracks = self.frame_logits[start + offset].float().sigmoid().flatten(1)
                queries = mask_logits[:, offset].sigmoid().flatten(1)
                intersection += tracks @ queries.T
                track_area += tracks.sum(1, keepdim=True)
                query_area += queries.sum(1)[None]
            union = track_area + query_area - intersection
            similarity += intersection / union.clamp_min(1e-6)  # soft IoU, 0 where both empty
        tracks_index, queries_index = linear_sum_assignment(similarity.numpy(), maximize=True)
        order = torch.empty(len(similarity), dtype=torch.long)
        order[torch.as_tensor(tracks_index)] = torch.as_tensor(queries_index, dtype=torch.long)
        return order

    def class_probabilities(self) -> Tensor:
        """(Q, K): each track's class probabilities, the mean over its clips weighted by the
        clips' lengths times the track's object probability (1 - "no object") and its mask's
        largest pixel probability in each."""
        if self.probabilities is None:
            raise ValueError("TrackLinker: no clip was added.")
        return self.probabilities

    def track_logits(self, track: int) -> Tensor:
        """(L, h, w) mask logits of one track over the video, in the storage dtype."""
        with torch.autocast("cpu", enabled=False):  # which refuses to stack float16
            return torch.stack([frame[track] for frame in self.frame_logits])


@dataclass
class VideoTracks:
    """The top-D (query, class) pairs of a video, with the low-resolution mask logits of
    their tracks; binary masks are made on demand, a frame or a track at a time.

    Attributes:
        scores: (D,) float32 class probabilities, descending.
        labels: (D,) int64 contiguous classes.
        logits: (U, L, h, w) mask logits of the U distinct tracks among the pairs (CPU).
        track_of: (D,) int64: pair d's track in ``logits`` (pairs of one query share it).
        padded_size, image_size, output_size: how to resize the logits (see
            ``resize_mask_logits``): the padded frame, the frame inside it, and (H, W).
        threshold: the logit above which a pixel is in the mask.
        device: where the masks are resized.
    """

    scores: Tensor
    labels: Tensor
    logits: Tensor
    track_of: Tensor
    padded_size: Tuple[int, int]
    image_size: Tuple[int, int]
    output_size: Tuple[int, int]
    threshold: float
    device: torch.device

    @classmethod
    def from_linker(
        cls,
        linker: TrackLinker,
        detections: int,
        padded_size: Tuple[int, int],
        image_size: Tuple[int, int],
        output_size: Tuple[int, int],
        threshold: float,
        device: torch.device,
    ) -> "VideoTracks":
        """The ``detections`` pairs with the highest class probabilities over all tracks and
        classes (a track may come with several classes)."""
        scores, labels, queries = top_class_pairs(linker.class_probabilities(), detections)
        distinct, track_of = torch.unique(queries.cpu(), return_inverse=True)
        height, width = linker.frame_logits[0].shape[-2:]
        shape = (len(distinct), linker.num_frames, height, width)
        logits = torch.empty(shape, dtype=linker.frame_logits[0].dtype)
        for index, query in enumerate(distinct.tolist()):
            logits[index] = linker.track_logits(query)
        return cls(
            scores=scores.cpu(),
            labels=labels.cpu(),
            logits=logits,
            track_of=track_of,
            padded_size=tuple(padded_size),
            image_size=tuple(image_size),
            output_size=tuple(output_size),
            threshold=threshold,
            device=device,
        )

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def num_frames(self) -> int:
        return int(self.logits.shape[1])

    def _resize(self, logits: Tensor) -> Tensor:
        return binary_mask_frames(
            logits, self.padded_size, self.image_size, self.output_size, self.threshold, self.device
        )

    def pair_masks(self) -> List[Tensor]:
        """Per pair, its (L, H, W) bool masks; pairs of one track share the tensor."""
        masks = [self._resize(track) for track in self.logits]
        return [masks[int(index)] for index in self.track_of]

    def track_masks(self, pair: int, start: int = 0, stop: Optional[int] = None) -> Tensor:
        """(stop - start, H, W) bool: pair ``pair``'s masks in frames ``start`` to ``stop``."""
        return self._resize(self.logits[int(self.track_of[pair]), start:stop])

    def frame_masks(self, frame: int) -> np.ndarray:
        """(D, H, W) bool: every pair's mask in one frame."""
        if not -self.num_frames <= frame < self.num_frames:
            raise IndexError(f"frame {frame} of a video of {self.num_frames} frames")
        masks = self._resize(self.logits[:, frame]).numpy()
        return masks[self.track_of.numpy()]

    def select(self, keep: Tensor) -> "VideoTracks":
        """The pairs ``keep`` (indices or a bool mask), with only the tracks they use."""
        distinct, track_of = torch.unique(self.track_of[keep], return_inverse=True)
        return dataclasses.replace(
            self,
            scores=self.scores[keep],
            labels=self.labels[keep],
            logits=self.logits[distinct],
            track_of=track_of,
        )
