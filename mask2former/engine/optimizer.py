"""Optimizer construction: per-parameter hyper-parameters and gradient clipping.

The hyper-parameters of every parameter come from Detectron2's ``get_default_optimizer_params``:
the backbone learning rate is scaled by ``SOLVER.BACKBONE_MULTIPLIER`` through its
``lr_factor_func``, normalization layers get ``SOLVER.WEIGHT_DECAY_NORM`` and embeddings (Swin's
position tables through ``overrides``, every ``nn.Embedding`` such as the learnable queries and
level embeddings) get ``SOLVER.WEIGHT_DECAY_EMBED``.
"""

import itertools
import logging
from typing import Any, Dict, Iterable, List, Tuple, Type

import torch
from detectron2.config import CfgNode
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils.registry import Registry

logger = logging.getLogger(__name__)

# Parameters (by their local name) that are embeddings although they do not live in nn.Embedding.
EMBEDDING_PARAM_NAMES = ("relative_position_bias_table", "absolute_pos_embed")


OPTIMIZER_REGISTRY = Registry("MASK_FORMER_OPTIMIZER")
OPTIMIZER_REGISTRY.__doc__ = """
Registry for the optimizers that ``SOLVER.OPTIMIZER`` names.

A registered object is a function named as the ``SOLVER.OPTIMIZER`` value it serves (the
official configs use "ADAMW" and "SGD"), called as ``obj(cfg)``; it returns the optimizer class
and its extra keyword arguments (besides the parameter groups and ``lr``). Register another
with ``@OPTIMIZER_REGISTRY.register()``.
"""


# Named, as Registry names them, after the SOLVER.OPTIMIZER values of the official configs.
@OPTIMIZER_REGISTRY.register()
def SGD(cfg: CfgNode) -> Tuple[Type[torch.optim.Optimizer], dict]:
    """SGD with ``SOLVER.MOMENTUM``."""
    return torch.optim.SGD, {"momentum": cfg.SOLVER.MOMENTUM}


@OPTIMIZER_REGISTRY.register()
def ADAMW(cfg: CfgNode) -> Tuple[Type[torch.optim.Optimizer], dict]:
    """AdamW, with the fused kernel where it is safe.

    The fused kernel updates every parameter in one pass, several times faster than the
    per-parameter loop on a CPU (BENCHMARKS.md, "Optimizer step"). It is not
    used with float16 AMP: the GradScaler would then hand the fused step gradients that are
    still scaled, and the full-model clipping, which runs first, would clip them scaled.
    """
    scaled_gradients = cfg.SOLVER.AMP.ENABLED and cfg.SOLVER.AMP.PRECISION == "float16"
    supported_device = torch.device(cfg.MODEL.DEVICE).type in ("cpu", "cuda")
    return torch.optim.AdamW, {"fused": supported_device and not scaled_gradients}


def add_full_model_gradient_clipping(
    optimizer_type: Type[torch.optim.Optimizer], *, max_norm: float, norm_type: float = 2.0
) -> Type[torch.optim.Optimizer]:
    """Derive an optimizer class that clips the norm of *all* gradients together before a step.

    Detectron2's own clipping (``CLIP_TYPE`` "value" or "norm") treats each parameter on its own;
    Mask2Former clips the global norm: the gradients of every parameter of every group, seen as
    one vector, are rescaled so that its ``norm_type``-norm is at most ``max_norm``.

    Args:
        optimizer_type: the optimizer class to extend.
        max_norm: largest allowed global gradient norm.
        norm_type: the p of the p-norm.

    Returns:
        A subclass of ``optimizer_type`` whose ``step`` clips first.
    """

    def step(self, closure=None):
        params = itertools.chain.from_iterable(group["params"] for group in self.param_groups)
        torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
        return optimizer_type.step(self, closure)

    return type(
        optimizer_type.__name__ + "WithFullModelGradientClipping", (optimizer_type,), {"step": step}
    )


def _with_gradient_clipping(
    cfg: CfgNode, optimizer_type: Type[torch.optim.Optimizer]
) -> Type[torch.optim.Optimizer]:
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not clip.ENABLED:
        return optimizer_type
    if clip.CLIP_TYPE == "full_model":
        return add_full_model_gradient_clipping(
            optimizer_type, max_norm=clip.CLIP_VALUE, norm_type=clip.NORM_TYPE
        )
    # "value" and "norm": Detectron2's per-parameter clipping
    return maybe_add_gradient_clipping(cfg, optimizer_type)


def _embedding_parameters(model: torch.nn.Module) -> Iterable[torch.nn.Parameter]:
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            yield from module.parameters(recurse=False)


def _split_embedding_params(
    param_groups: List[Dict[str, Any]], embeddings: set, weight_decay_embed: float
) -> List[Dict[str, Any]]:
    """Move the parameters of ``nn.Embedding`` modules into groups with their own weight decay.

    ``get_default_optimizer_params`` can override hyper-parameters by module type only for
    normalization layers; embedding weights are called "weight" like any other, so they are
    separated here from the groups it returned.
    """
    result = []
    for group in param_groups:
        plain = [p for p in group["params"] if id(p) not in embeddings]
        embedded = [p for p in group["params"] if id(p) in embeddings]
        if plain:
            result.append({**group, "params": plain})
        if embedded:
            result.append({**group, "params": embedded, "weight_decay": weight_decay_embed})
    return result


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Build the optimizer named by ``SOLVER.OPTIMIZER`` ("ADAMW" or "SGD") for ``model``.

    Args:
        cfg: the full config; reads ``SOLVER.{OPTIMIZER, BASE_LR, WEIGHT_DECAY,
            WEIGHT_DECAY_NORM, WEIGHT_DECAY_EMBED, BACKBONE_MULTIPLIER, MOMENTUM,
            CLIP_GRADIENTS}``.
        model: the model before any DistributedDataParallel wrapping (the backbone's parameters
            are those whose name starts with "backbone.").

    Returns:
        The optimizer, with gradient clipping built into its ``step`` when enabled.
    """
    solver = cfg.SOLVER
    name = solver.OPTIMIZER
    if name not in OPTIMIZER_REGISTRY:
        known = sorted(registered for registered, _ in OPTIMIZER_REGISTRY)
        raise ValueError(
            f"SOLVER.OPTIMIZER is {name!r}, which is not a registered optimizer; registered: "
            f"{known}. Register another with @OPTIMIZER_REGISTRY.register() "
            "(mask2former.engine.optimizer)."
        )
    backbone_multiplier = solver.BACKBONE_MULTIPLIER
    param_groups = get_default_optimizer_params(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        lr_factor_func=lambda param_name: (
            backbone_multiplier if param_name.startswith("backbone.") else 1.0
        ),
        overrides={
            param_name: {"weight_decay": solver.WEIGHT_DECAY_EMBED}
            for param_name in EMBEDDING_PARAM_NAMES
        },
    )
    embeddings = {id(p) for p in _embedding_parameters(model)}
    param_groups = _split_embedding_params(param_groups, embeddings, solver.WEIGHT_DECAY_EMBED)
    optimizer_type, extra_kwargs = OPTIMIZER_REGISTRY.get(name)(cfg)
    optimizer_type = _with_gradient_clipping(cfg, optimizer_type)
    return optimizer_type(param_groups, lr=solver.BASE_LR, **extra_kwargs)
