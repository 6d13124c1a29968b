"""Finding the operations that would make the host wait for a CUDA device, on any device.

A CUDA kernel launch returns at once; the host runs ahead and queues more work while the GPU
computes. An operation that needs a value on the host (``.item()``, ``.tolist()``, ``if
tensor:``, a copy to the CPU) or whose output size depends on the data (``nonzero``, boolean-mask
indexing, ``unique``, ...) makes the host wait until the GPU has caught up, and then the GPU
waits for the host. :class:`HostSyncRecorder` lists such operations while code runs, with the
line of this package that caused each; it works on the CPU too, where it reports what the same
code would do on a GPU, so that tests without a GPU can hold the count down.

Two mechanisms, both active inside ``with HostSyncRecorder(...)``:

- a ``TorchDispatchMode`` sees every aten operation and records those in
  :data:`DATA_DEPENDENT_OPS`, boolean-mask indexing, blocking copies between the CPU and a
  GPU, and ``_local_scalar_dense`` (a tensor read as a Python number: ``item``, ``int``,
  ``float``, ``bool``, ...);
- wrappers around the ``Tensor`` methods that read values without an aten operation on the
  CPU (``tolist``, ``numpy``, ``cpu``, ``to("cpu")``, and ``item`` / ``__bool__`` /
  ``__int__`` / ``__float__`` / ``__index__`` for a clearer name), recorded for tensors on the
  recorder's device, and around ``torch.tensor`` / ``torch.as_tensor`` of host data onto that
  device (a blocking host-to-device copy waits for the device's queue too).

The recorder also counts, per stage, the aten operations that would each launch work on a GPU
(views and bare allocations left out): a launch costs the host a few microseconds whatever the
kernel does, so where the device waits for the host this count, not the FLOPs, sets the time.
It is a property of the code, the same on every run and machine: a deterministic measure of
launch overhead that a CPU can take for a GPU.

Not seen: what compiled code does inside an operation (a custom kernel's own reads) and
``torch.cuda.synchronize`` calls.

Library code uses :func:`to_device` to copy host data to the device without waiting, and marks
deliberate host-side tensor work with :func:`on_host`.
"""

import functools
import os
import sys
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "DATA_DEPENDENT_OPS",
    "HostSync",
    "HostSyncRecorder",
    "OTHER_STAGE",
    "format_table",
    "launches_device_work",
    "on_host",
    "to_device",
]

_aten = torch.ops.aten

# aten operations whose output size or value depends on the data: the host reads it back.
DATA_DEPENDENT_OPS = {
    _aten._local_scalar_dense: "read a value to the host",
    _aten.nonzero: "data-dependent output size",
    _aten.masked_select: "data-dependent output size",
    _aten._unique: "data-dependent output size",
    _aten._unique2: "data-dependent output size",
    _aten.unique_dim: "data-dependent output size",
    _aten.unique_consecutive: "data-dependent output size",
    _aten.unique_dim_consecutive: "data-dependent output size",
    _aten.bincount: "output size from the maximum value",
    _aten.equal: "returns a Python bool",
    _aten.is_nonzero: "returns a Python bool",
}

# aten operations that are neither views nor launch device work: bare allocations and
# reinterpretations of metadata. Views (``OpOverload.is_view``) are left out as well.
_NO_KERNEL_OPS = {
    _aten._unsafe_view,
    _aten.empty,
    _aten.empty_like,
    _aten.empty_strided,
    _aten.new_empty,
    _aten.new_empty_strided,
    _aten.resize_,
    _aten.set_,
}


def launches_device_work(func) -> bool:
    """Whether aten operation ``func`` (an ``OpOverload``) would run a kernel on a GPU: not a
    view and not a bare allocation."""
    return not func.is_view and func.overloadpacket not in _NO_KERNEL_OPS


# The stage of operations outside every watched module and stage() block.
OTHER_STAGE = "other"

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_THIS_FILE = os.path.abspath(__file__)
_local = threading.local()


@dataclass(frozen=True)
class HostSync:
    """One kind of synchronising operation, at one place, in one stage.

    Attributes:
        stage: the stage it ran in (see :meth:`HostSyncRecorder.watch` and ``stage``).
        operation: what synchronises, e.g. ``"aten.nonzero"``, ``"Tensor.tolist"``,
            ``"aten.index (boolean mask)"``.
        location: ``"mask2former/<file>.py:<line> (<function>)"``: the innermost line of this
            package on the call stack, or the innermost line outside PyTorch when the package
            is not on the stack.
    """

    stage: str
    operation: str
    location: str


def _is_bool_index(index) -> bool:
    return isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)


def _devices_differ(first: torch.device, second: torch.device) -> bool:
    return first.type != second.type and "cpu" in (first.type, second.type)


def _call_site() -> str:
    """The innermost frame of this package (else outside torch) below the recorder."""
    frame = sys._getframe(2)
    fallback = None
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if path != _THIS_FILE:
            where = f"{frame.f_lineno} ({frame.f_code.co_name})"
            if path.startswith(_PACKAGE_ROOT + os.sep):
                relative = os.path.relpath(path, os.path.dirname(_PACKAGE_ROOT))
                return f"{relative}:{where}"
            if fallback is None and f"{os.sep}torch{os.sep}" not in path:
                fallback = f"{path}:{where}"
        frame = frame.f_back
    return fallback or "<unknown>"


@contextmanager
def on_host() -> Iterator[None]:
    """Mark a block that computes with host (CPU) tensors on purpose, whatever the device.

    Reading such tensors costs no synchronisation, but on the CPU a :class:`HostSyncRecorder`
    cannot tell them from tensors that would be on a GPU: it records nothing inside the block
    when its device is the CPU (on a GPU it still checks each tensor's device).
    """
    depth = getattr(_local, "on_host", 0)
    _local.on_host = depth + 1
    try:
        yield
    finally:
        _local.on_host = depth


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a host tensor to ``device`` without making the host wait.

    A plain copy from pageable host memory to a GPU waits for the work queued on the device;
    this one goes through pinned memory, asynchronously (the pinned buffer is kept until the
    copy has run). A tensor already on ``device`` is returned as it is; one on another
    accelerator is copied with ``Tensor.to``.
    """
    device = torch.device(device)
    if tensor.device == device or (device.type == "cpu" and tensor.device.type == "cpu"):
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


class _SyncDispatchMode(TorchDispatchMode):
    """Records the synchronising aten operations into ``record``."""

    def __init__(
        self,
        record: Callable[[str], None],
        on_device: Callable[[torch.Tensor], bool],
        count_operation: Callable[[object, tuple, dict], None],
    ) -> None:
        super().__init__()
        self._record = record
        self._on_device = on_device
        self._count_operation = count_operation

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if launches_device_work(func):
            self._count_operation(func, args, kwargs)
        name = self._synchronising(func, args, kwargs)
        if name is not None and not getattr(_local, "in_wrapper", False):
            self._record(name)
        return func(*args, **kwargs)

    def _synchronising(self, func, args, kwargs) -> Optional[str]:
        packet = func.overloadpacket
        first = args[0] if args else None
        on_device = isinstance(first, torch.Tensor) and self._on_device(first)
        if packet in DATA_DEPENDENT_OPS and on_device:
            return f"aten.{packet.__name__}"
        if func is _aten.repeat_interleave.Tensor and on_device:
            if kwargs.get("output_size") is None and (len(args) < 2 or args[1] is None):
                return "aten.repeat_interleave (no output_size)"
        if packet in (_aten.index, _aten.index_put, _aten.index_put_) and on_device:
            if any(_is_bool_index(index) for index in args[1]):
                return f"aten.{packet.__name__} (boolean mask)"
        if packet is _aten._to_copy and isinstance(args[0], torch.Tensor):
            target = kwargs.get("device")
            if target is not None and _devices_differ(args[0].device, torch.device(target)):
                if not kwargs.get("non_blocking", False):
                    return "aten._to_copy (blocking copy between host and device)"
        if packet is _aten.copy_ and isinstance(args[1], torch.Tensor):
            blocking = not (args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
            if blocking and _devices_differ(args[0].device, args[1].device):
                return "aten.copy_ (blocking copy between host and device)"
        return None


# Tensor methods that read values to the host without an aten operation on the CPU, or that
# are clearer by their own name than as aten._local_scalar_dense.
_TENSOR_METHODS = (
    "item",
    "tolist",
    "numpy",
    "cpu",
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
)
_FACTORIES = ("tensor", "as_tensor")


class HostSyncRecorder:
    """Records the operations that would synchronise the host with ``device`` while active.

    Usage::

        recorder = HostSyncRecorder("cpu")
        recorder.watch({"backbone": model.backbone})
        with recorder:
            model(inputs)
            with recorder.stage("post-processing"):
                ...
        recorder.counts()  # {HostSync(stage, operation, location): count}
        recorder.operations  # {stage: aten operations that would launch device work}
        recorder.operation_kinds  # {(stage, "<namespace>.<name>"): how many of them}

    While active, the wrappers replace the ``Tensor`` methods and ``torch`` factories for the
    whole process (removed on exit): one recorder at a time, for diagnostics and tests.

    Args:
        device: the device the code would run on. Tensor reads (``tolist``, ``cpu``, ...) are
            recorded for tensors on it, and ``torch.tensor`` / ``torch.as_tensor`` of host data
            onto it. On the CPU, "cpu" stands for the GPU the same code would use.
    """

    def __init__(self, device: Union[str, torch.device] = "cpu"):
        self.device = torch.device(device)
        self.events: List[HostSync] = []
        # (stage, "<namespace>.<name>", e.g. "aten.add") -> how many of the operations that
        # would launch work on a GPU ran
        self.operation_kinds: Counter = Counter()
        self._stages: List[str] = []
        self._hooks: list = []
        self._saved: Dict[Tuple[object, str], object] = {}
        self._mode: Optional[_SyncDispatchMode] = None

    # ----- stages

    @property
    def current_stage(self) -> str:
        return self._stages[-1] if self._stages else OTHER_STAGE

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Attribute the operations inside the block to stage ``name``."""
        self._stages.append(name)
        try:
            yield
        finally:
            self._stages.pop()

    def watch(self, modules: Dict[str, nn.Module]) -> None:
        """Attribute the operations inside each module's forward to its name (forward hooks,
        removed by :meth:`remove_hooks`)."""
        for name, module in modules.items():
            self._hooks.append(module.register_forward_pre_hook(self._enter_hook(name)))
            self._hooks.append(module.register_forward_hook(self._exit_hook(name)))

    def _enter_hook(self, name: str) -> Callable:
        def hook(module, inputs):
            self._stages.append(name)

        return hook

    def _exit_hook(self, name: str) -> Callable:
        def hook(module, inputs, outputs):
            if self._stages and self._stages[-1] == name:
                self._stages.pop()

        return hook

    def remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    # ----- results

    def counts(self) -> Dict[HostSync, int]:
        """How often each (stage, operation, location) occurred, in order of first occurrence."""
        return dict(Counter(self.events))

    def count(self, stage: Optional[str] = None) -> int:
        """Number of synchronising operations, in ``stage`` or in all."""
        return sum(1 for event in self.events if stage is None or event.stage == stage)

    @property
    def operations(self) -> Counter:
        """Stage -> aten operations run in it that would launch device work."""
        totals: Counter = Counter()
        for (stage, _), count in self.operation_kinds.items():
            totals[stage] += count
        return totals

    def operation_count(self, stage: Optional[str] = None) -> int:
        """Number of aten operations that would launch device work, in ``stage`` or in all."""
        operations = self.operations
        return operations[stage] if stage is not None else sum(operations.values())

    # ----- recording

    def _count_operation(self, func, args: tuple, kwargs: dict) -> None:
        """Count an operation whose first tensor argument (or, for a factory, whose
        ``device``) is on the recorder's device; on the CPU, none inside :func:`on_host`."""
        if self._host_work():
            return
        first = next(
            (
                value
                for arg in args
                for value in (arg if isinstance(arg, (list, tuple)) else (arg,))
                if isinstance(value, torch.Tensor)
            ),
            None,
        )
        target = first.device if first is not None else torch.device(kwargs.get("device", "cpu"))
        if self._on_device(target):
            self.operation_kinds[(self.current_stage, str(func.overloadpacket))] += 1

    def _host_work(self) -> bool:
        """Inside :func:`on_host` on the CPU: nothing there stands for GPU work."""
        return bool(getattr(_local, "on_host", 0)) and self.device.type == "cpu"

    def _record(self, operation: str) -> None:
        if self._host_work():
            return
        self.events.append(HostSync(self.current_stage, operation, _call_site()))

    def _on_device(self, tensor_or_device: Union[torch.Tensor, torch.device]) -> bool:
        device = getattr(tensor_or_device, "device", tensor_or_device)
        if device.type != self.device.type:
            return False
        return self.device.index is None or device.index in (None, self.device.index)

    def _guarded(self, original: Callable, operation: Optional[str]) -> Callable:
        """``original`` that records ``operation`` (None: nothing) and keeps the aten
        operations it runs from being recorded a second time."""

        def call(*args, **kwargs):
            if operation is None or getattr(_local, "in_wrapper", False):
                return original(*args, **kwargs)
            self._record(operation)
            _local.in_wrapper = True
            try:
                return original(*args, **kwargs)
            finally:
                _local.in_wrapper = False

        return call

    def _wrap_method(self, name: str) -> Callable:
        original = getattr(torch.Tensor, name)

        @functools.wraps(original)
        def method(tensor, *args, **kwargs):
            operation = f"Tensor.{name}" if self._on_device(tensor) else None
            return self._guarded(original, operation)(tensor, *args, **kwargs)

        return method

    def _wrap_to(self) -> Callable:
        original = torch.Tensor.to

        @functools.wraps(original)
        def to(tensor, *args, **kwargs):
            target = kwargs.get("device", args[0] if args else None)
            to_host = isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu"
            operation = "Tensor.to (cpu)" if to_host and self._on_device(tensor) else None
            return self._guarded(original, operation)(tensor, *args, **kwargs)

        return to

    def _wrap_factory(self, name: str) -> Callable:
        original = getattr(torch, name)

        @functools.wraps(original)
        def factory(data, *args, **kwargs):
            device = kwargs.get("device")
            on_host = not isinstance(data, torch.Tensor) or data.device.type == "cpu"
            copies = device is not None and on_host and self._on_device(torch.device(device))
            operation = f"torch.{name} (host data to the device)" if copies else None
            return self._guarded(original, operation)(data, *args, **kwargs)

        return factory

    def __enter__(self) -> "HostSyncRecorder":
        patches = {(torch.Tensor, name): self._wrap_method(name) for name in _TENSOR_METHODS}
        patches[(torch.Tensor, "to")] = self._wrap_to()
        patches.update({(torch, name): self._wrap_factory(name) for name in _FACTORIES})
        for (owner, name), replacement in patches.items():
            self._saved[(owner, name)] = owner.__dict__.get(name)
            setattr(owner, name, replacement)
        self._mode = _SyncDispatchMode(self._record, self._on_device, self._count_operation)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self._mode.__exit__(*exc_info)
        self._mode = None
        for (owner, name), saved in self._saved.items():
            if saved is None:
                delattr(owner, name)
            else:
                setattr(owner, name, saved)
        self._saved.clear()


def format_table(counts: Dict[HostSync, int]) -> str:
    """A plain-text table of :meth:`HostSyncRecorder.counts`: stage, count, operation, line."""
    rows = [
        (sync.stage, str(count), sync.operation, sync.location) for sync, count in counts.items()
    ]
    header = ("stage", "count", "operation", "location")
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(3)]
    return "\n".join(
        "  ".join([*(value.ljust(width) for value, width in zip(row, widths)), row[3]])
        for row in [header, *rows]
    )
