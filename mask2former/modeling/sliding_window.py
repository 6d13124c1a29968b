"""Sliding-window semantic inference: where the windows go on an image.

An image too large for one forward (aerial, medical or document images of several thousand
pixels a side) is segmented in overlapping windows of a fixed size; each window's per-class
scores are added into a canvas of the image's size and every pixel is divided by the number
of windows that covered it (``MaskFormer.sliding_window_inference``). Only the semantic output
can be stitched that way: instances and panoptic segments cut by a window border would need
matching across windows.
"""

from dataclasses import dataclass
from typing import List, Sequence, Tuple

__all__ = ["SlidingWindow", "window_starts"]


def window_starts(length: int, window: int, stride: int) -> List[int]:
    """Offsets of the windows along one side: every ``stride`` pixels, the last one moved back
    so that it ends at the border; one window at 0 when the side is not longer than a window.

    Args:
        length: the image side, in pixels.
        window: the window side (> 0).
        stride: the step between windows (> 0, at most ``window``, so that no pixel is missed).
    """
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    starts.append(length - window)
    return starts


@dataclass(frozen=True)
class SlidingWindow:
    """Window size and stride, (height, width) in pixels of the model's input (after the
    test-time resize), and how many windows one forward runs."""

    size: Tuple[int, int]
    stride: Tuple[int, int]
    windows_per_pass: int = 1

    @classmethod
    def from_values(
        cls, size: Sequence[int], stride: Sequence[int], windows_per_pass: int, where: str = ""
    ) -> "SlidingWindow":
        """Checked settings; ``where`` (a config key prefix) names them in the ValueError."""
        prefix = f"{where}." if where else ""

        def pair(value: Sequence[int], name: str) -> Tuple[int, int]:
            values = tuple(value)
            if len(values) != 2 or not all(isinstance(v, int) and v > 0 for v in values):
                raise ValueError(
                    f"{prefix}{name} must be two positive integers (height, width), got "
                    f"{list(values)}."
                )
            return values

        size_pair, stride_pair = pair(size, "SIZE"), pair(stride, "STRIDE")
        if any(s > w for s, w in zip(stride_pair, size_pair)):
            raise ValueError(
                f"{prefix}STRIDE {list(stride_pair)} is larger than {prefix}SIZE "
                f"{list(size_pair)}: pixels between the windows would get no prediction. Use a "
                "stride at most the window size (about 2/3 of it is usual)."
            )
        if not (isinstance(windows_per_pass, int) and windows_per_pass >= 1):
            raise ValueError(
                f"{prefix}WINDOWS_PER_PASS must be an integer >= 1, got {windows_per_pass!r}."
            )
        return cls(size_pair, stride_pair, windows_per_pass)

    def boxes(self, height: int, width: int) -> List[Tuple[int, int, int, int]]:
        """The windows (top, left, bottom, right) covering a ``height`` x ``width`` image, row
        by row; all of the same size, the window size clipped to the image."""
        window_h, window_w = min(self.size[0], height), min(self.size[1], width)
        return [
            (top, left, top + window_h, left + window_w)
            for top in window_starts(height, window_h, self.stride[0])
            for left in window_starts(width, window_w, self.stride[1])
        ]
