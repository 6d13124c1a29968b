"""Replaying the network's forward from CUDA graphs: inference without launch overhead.

On a GPU an R50 inference is bound by the host: it launches over a thousand kernels per image,
each costing the host a few microseconds whatever it computes, and the GPU waits for them
(BENCHMARKS.md, "GPU"). A CUDA graph records the kernels of one forward once and replays them
all with one launch. :class:`GraphedNetwork` keeps one graph per input shape and precision.

What a captured forward must not do, since a replay repeats only the kernels: make the host
wait for the device (``.item()``, ``nonzero``, a blocking copy), copy from the host (the copy's
source would be read again at every replay), or choose its path from tensor values. The
network's forward does none of these: tests/test_cuda_graphs.py runs it on fake CUDA tensors on
the CPU and checks. Sizes are fine: a graph is captured per input shape, so everything the
forward derives from the shape (position embeddings, level tables) is recomputed by the
replayed kernels with the same values.
"""

import copy
import logging
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["CudaGraphBackend", "GraphedNetwork", "autocast_state"]

logger = logging.getLogger(__name__)

# (shape, dtype, device, autocast dtype or None): what a captured graph is valid for
_Key = Tuple[Tuple[int, ...], torch.dtype, torch.device, Optional[torch.dtype]]


def autocast_state(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast casts to on ``device_type`` here, or None when it is off."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


class CudaGraphBackend:
    """Capture and replay with ``torch.cuda.CUDAGraph`` (the one backend outside tests)."""

    def __init__(self):
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a CUDA device, and CUDA is not available here.")
        self.pool = torch.cuda.graph_pool_handle()

    def warm_up(self, function: Callable[[], object], runs: int) -> None:
        """Run ``function`` on a side stream first, as capture requires: one-time work
        (cuDNN and cuBLAS set-up, lazy initialisation) must not happen inside the capture."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(runs):
                function()
        torch.cuda.current_stream().wait_stream(side)

    def capture(self, function: Callable[[], object]) -> Tuple[object, object]:
        """A graph of ``function``'s kernels and the output tensors its replays write."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = function()
        return graph, output


@dataclass
class _Capture:
    graph: object  # has replay()
    static_input: Tensor
    static_output: Dict[str, object]


class GraphedNetwork:
    """``network(images)`` replayed from a CUDA graph per input shape and precision.

    The first call with a new (shape, dtype, device, autocast dtype) captures a graph: the
    images are copied into a buffer of the graph's own, the forward runs ``warmup_runs`` times
    on a side stream, then once under capture, with autocast's cache of weight casts off (a
    cache made during a capture would hold the graph's memory). Later calls of that key copy
    the images into the buffer and replay. At most ``max_graphs`` graphs are kept; the least
    recently used is dropped first (and captured again if its shape comes back: inputs of
    many different sizes gain nothing). All graphs share one memory pool.

    Replays run without autograd: a call while gradients are recorded (training, or a forward
    outside ``torch.no_grad()``) runs ``network`` itself.

    The returned dict holds the graph's own output tensors: the next call overwrites them,
    whichever graph it replays (the graphs share their memory). Use or clone them before the
    next call, as :class:`~mask2former.modeling.meta_arch.mask_former.MaskFormer`'s
    post-processing does. A graph reads the module's parameters where they were at capture:
    after replacing parameters (``model.to(...)``, loading with ``assign=True``) call
    :meth:`clear`. Loading weights in place (``load_state_dict``) needs nothing.

    Args:
        network: images (N, 3, H, W) -> dict of tensors (nested lists and dicts allowed).
        max_graphs: graphs kept at once.
        warmup_runs: eager forwards on a side stream before each capture.
        backend: captures and replays; :class:`CudaGraphBackend` by default (tests pass a
            stand-in that works on the CPU).
    """

    def __init__(
        self,
        network: Callable[[Tensor], Dict[str, object]],
        *,
        max_graphs: int = 8,
        warmup_runs: int = 1,
        backend: Optional[object] = None,
    ):
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be at least 1, got {max_graphs}.")
        self.network = network
        self.max_graphs = max_graphs
        self.warmup_runs = warmup_runs
        self.backend = CudaGraphBackend() if backend is None else backend
        self.captures = 0  # graphs captured so far, including those dropped and captured again
        self._graphs: OrderedDict[_Key, _Capture] = OrderedDict()

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        """Drop every graph (they are captured again when needed)."""
        self._graphs.clear()

    def __deepcopy__(self, memo) -> "GraphedNetwork":
        # a copied model gets its own, empty set of graphs around its own network
        return GraphedNetwork(
            copy.deepcopy(self.network, memo),
            max_graphs=self.max_graphs,
            warmup_runs=self.warmup_runs,
            backend=self.backend,
        )

    def __call__(self, images: Tensor) -> Dict[str, object]:
        if torch.is_grad_enabled():
            return self.network(images)
        key = (tuple(images.shape), images.dtype, images.device, autocast_state(images.device.type))
        capture = self._graphs.get(key)
        if capture is None:
            capture = self._capture(images, key)
        else:
            self._graphs.move_to_end(key)
            capture.static_input.copy_(images)
            capture.graph.replay()
        return capture.static_output

    def _capture(self, images: Tensor, key: _Key) -> _Capture:
        if len(self._graphs) >= self.max_graphs:
            dropped, _ = self._graphs.popitem(last=False)
            logger.warning(
                "More than max_graphs=%d input shapes: dropped the CUDA graph of %s. Inputs of "
                "many different sizes are captured again and again; resize them to fewer sizes "
                "or raise max_graphs.",
                self.max_graphs,
                tuple(dropped[0]),
            )
        static_input = images.clone()
        precision = key[3]
        logger.info(
            "Capturing a CUDA graph of the network for input %s (%s): graph %d",
            tuple(images.shape),
            "float32" if precision is None else str(precision).replace("torch.", ""),
            self.captures + 1,
        )
        # the caller's autocast state, with the cache of weight casts off during capture
        region = (
            nullcontext()
            if precision is None
            else torch.autocast(images.device.type, dtype=precision, cache_enabled=False)
        )
        with region:
            self.backend.warm_up(lambda: self.network(static_input), self.warmup_runs)
            try:
                graph, static_output = self.backend.capture(lambda: self.network(static_input))
            except RuntimeError as error:
                raise RuntimeError(
                    f"Capturing the network into a CUDA graph failed for input "
                    f"{tuple(images.shape)}: {error}\nA captured forward must not make the host "
                    "wait for the device or copy from the host (tests/test_cuda_graphs.py "
                    "checks the stock models). Run without CUDA graphs (Predictor(..., "
                    "cuda_graphs=False), demo/demo.py without --cuda-graphs)."
                ) from error
        capture = _Capture(graph, static_input, static_output)
        self._graphs[key] = capture
        self.captures += 1
        # the capture only recorded the kernels: run them once for this call's result
        capture.graph.replay()
        return capture
