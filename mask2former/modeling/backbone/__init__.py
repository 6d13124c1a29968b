"""Backbones in detectron2's BACKBONE_REGISTRY.

- "build_resnet_backbone": detectron2's ResNet (R50/R101; official configs' default).
- "build_resnet_deeplab_backbone": detectron2's DeepLab ResNet variant (MODEL.RESNETS.STEM_TYPE
  "deeplab", MODEL.RESNETS.RES5_MULTI_GRID), registered by importing detectron2.projects.deeplab.
- "D2SwinTransformer": Swin Transformer T/S/B/L (swin.py).
"""

from detectron2.projects.deeplab import build_resnet_deeplab_backbone

from .swin import D2SwinTransformer

__all__ = ["D2SwinTransformer", "build_resnet_deeplab_backbone"]
