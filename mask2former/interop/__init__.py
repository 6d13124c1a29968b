"""Interoperability with other Mask2Former implementations.

- :mod:`.huggingface`: checkpoints of Hugging Face transformers'
  ``Mask2FormerForUniversalSegmentation``, in both directions (needs ``safetensors``, and
  ``transformers`` to write Hugging Face folders).

Nothing here is imported by ``import mask2former``; the optional dependencies are imported
when a conversion runs.
"""
