"""Conversion of ImageNet-pretrained backbone weights into detectron2 checkpoints.

The files written are what detectron2's `DetectionCheckpointer` reads from a ``.pkl`` file:
``{"model": {name: numpy array}, "__author__": ..., "matching_heuristics": True}`` (or the same
as ``.pth`` / ``.safetensors``, see :mod:`mask2former.utils.weights_io`); the heuristics let
the checkpointer add the ``backbone.`` prefix when loading into a full model.
"""

import re
from typing import Any, Callable, Dict, Mapping

import numpy as np
import torch

from ...utils.weights_io import load_weights_file, save_weights_file

__all__ = [
    "convert_checkpoint_file",
    "convert_swin_state_dict",
    "convert_torchvision_resnet_state_dict",
    "extract_state_dict",
]

_TORCHVISION_RULES = (
    (re.compile(r"^conv1\."), "stem.conv1."),
    (re.compile(r"^bn1\."), "stem.conv1.norm."),
    (re.compile(r"^layer(\d)\."), lambda match: f"res{int(match.group(1)) + 1}."),
    (re.compile(r"\.bn(\d)\."), r".conv\1.norm."),
    (re.compile(r"\.downsample\.0\."), ".shortcut."),
    (re.compile(r"\.downsample\.1\."), ".shortcut.norm."),
)

# Swin ImageNet checkpoints: classifier, the final LayerNorm before it, and the precomputed
# shifted-window masks (recomputed here for each input size).
_SWIN_DROPPED = re.compile(r"^(head\.|norm\.)|\.attn_mask$")


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(key, str) and torch.is_tensor(value) for key, value in obj.items())
    )


def extract_state_dict(obj: Any, source: str) -> Dict[str, torch.Tensor]:
    """The state dict inside a loaded ``.pth`` object: the object itself, or its "model" or
    "state_dict" entry.

    Args:
        obj: what `torch.load` returned.
        source: file name used in error messages.

    Raises:
        ValueError: `obj` holds no state dict.
    """
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and _is_state_dict(obj[key]):
                return dict(obj[key])
    found = sorted(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
    raise ValueError(
        f"{source} does not contain a state dict (a dict of tensors, possibly under 'model' or "
        f"'state_dict'); found {found}."
    )


def convert_torchvision_resnet_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> Dict[str, np.ndarray]:
    """Rename a torchvision ResNet state dict to detectron2's ResNet names.

    conv1/bn1 -> stem.conv1/stem.conv1.norm, layerN.i.convK/bnK -> res{N+1}.i.convK/convK.norm,
    downsample.0/1 -> shortcut/shortcut.norm. The classifier (fc) and the BatchNorm
    ``num_batches_tracked`` counters are dropped.

    Raises:
        ValueError: a key is not one of a torchvision ResNet.
    """
    converted = {}
    for name, value in state_dict.items():
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            continue
        new_name = name
        for pattern, replacement in _TORCHVISION_RULES:
            new_name = pattern.sub(replacement, new_name)
        if not new_name.startswith(("stem.", "res")):
            raise ValueError(f"'{name}' is not a key of a torchvision ResNet state dict")
        converted[new_name] = value.detach().cpu().numpy()
    return converted


def convert_swin_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    """Keep the backbone weights of an official Swin ImageNet state dict, names unchanged.

    Drops the classification head, the final LayerNorm and the ``attn_mask`` buffers; the
    per-stage output norms ``norm0``..``norm3`` of `D2SwinTransformer` are not in ImageNet
    checkpoints and keep their initialisation.

    Raises:
        ValueError: the dict has no Swin patch embedding.
    """
    if "patch_embed.proj.weight" not in state_dict:
        raise ValueError(
            "not a Swin Transformer state dict: 'patch_embed.proj.weight' is missing "
            f"(first keys: {sorted(state_dict)[:5]})"
        )
    return {
        name: value.detach().cpu().numpy()
        for name, value in state_dict.items()
        if not _SWIN_DROPPED.search(name)
    }


def convert_checkpoint_file(
    input_path: str,
    output_path: str,
    convert: Callable[[Mapping[str, torch.Tensor]], Dict[str, np.ndarray]],
    author: str,
) -> int:
    """Load a ``.pth`` file, convert its state dict with `convert`, write a detectron2 ``.pkl``.

    Both files go through :mod:`mask2former.utils.weights_io`: the input is read without
    running code from it, and the output may also be ``.pth`` or ``.safetensors``.

    Args:
        input_path: PyTorch checkpoint (a state dict, or a dict with "model"/"state_dict").
        output_path: where to write the detectron2 checkpoint (``.pkl``, ``.pth`` or
            ``.safetensors``).
        convert: e.g. `convert_torchvision_resnet_state_dict` or `convert_swin_state_dict`.
        author: the checkpoint's ``__author__`` field.

    Returns:
        The number of tensors written.

    Raises:
        FileNotFoundError: `input_path` does not exist.
        ValueError: the file cannot be read as a checkpoint (``WeightsFileError``, or
            ``UnsafeWeightsError`` when it asks to run code) or holds unexpected keys.
    """
    weights = convert(extract_state_dict(load_weights_file(input_path), input_path))
    save_weights_file(output_path, weights, author=author, matching_heuristics=True)
    return len(weights)
