"""Mask2Former for Detectron2."""
