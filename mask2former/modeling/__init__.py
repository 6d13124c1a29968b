from . import pixel_decoder as _pixel_decoder  # noqa: F401  (only registration)
from . import transformer_decoder as _transformer_decoder  # noqa: F401  (only registration)
from .meta_arch import mask_former_head as _mask_former_head  # noqa: F401  (only registration)
from . import backbone as _backbone  # noqa: F401  (only registration)
