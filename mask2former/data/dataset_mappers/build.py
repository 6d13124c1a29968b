"""The dataset-mapper registry and its builder."""

from detectron2.config import CfgNode
from detectron2.utils.registry import Registry

__all__ = ["MASK_FORMER_MAPPER_REGISTRY", "build_dataset_mapper"]


class _NamedRegistry(Registry):
    """A Registry whose entries are registered under a given name, not ``__name__``."""

    def register_as(self, name: str):
        """Decorator: register the decorated class under ``name``."""

        def deco(obj):
            self._do_register(name, obj)
            return obj

        return deco


MASK_FORMER_MAPPER_REGISTRY = _NamedRegistry("MASK_FORMER_MAPPER")
MASK_FORMER_MAPPER_REGISTRY.__doc__ = """
Registry for dataset mappers, chosen by ``INPUT.DATASET_MAPPER_NAME``.

A registered object is called as ``mapper = obj(cfg, is_train)`` and the mapper as
``mapper(dataset_dict) -> dict``: it reads one image's files and returns the model input
("image" (3, H, W) uint8 tensor, "instances" with gt_classes and gt_masks, "sem_seg" where
applicable, "padding_mask").
"""


def build_dataset_mapper(cfg: CfgNode, is_train: bool = True):
    """Build the mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME``.

    Raises:
        KeyError: when no mapper has that name; the message lists the registered ones.
    """
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in MASK_FORMER_MAPPER_REGISTRY:
        known = ", ".join(sorted(name for name, _obj in MASK_FORMER_MAPPER_REGISTRY))
        raise KeyError(
            f"INPUT.DATASET_MAPPER_NAME is {name!r}, which is not a registered dataset mapper. "
            f"Registered mappers: {known}."
        )
    return MASK_FORMER_MAPPER_REGISTRY.get(name)(cfg, is_train)
