"""Mask2Former's modules; importing this package registers them with Detectron2's registries."""

from . import backbone as _backbone  # noqa: F401  (only registration)
from . import meta_arch as _meta_arch  # noqa: F401  (only registration)
from . import pixel_decoder as _pixel_decoder  # noqa: F401  (only registration)
from . import transformer_decoder as _transformer_decoder  # noqa: F401  (only registration)
