"""Meta-architecture and head."""

from . import mask_former as _mask_former  # noqa: F401  (only registration)
from . import mask_former_head as _mask_former_head  # noqa: F401  (only registration)
from . import video_mask_former as _video_mask_former  # noqa: F401  (only registration)
