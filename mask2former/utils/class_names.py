"""Class names of a model from its data set's metadata.

Kept apart from the drawing code (``visualization``), which imports detectron2's
visualizers and with them matplotlib: the predictor, the export and the Hugging Face
conversion need the names, not the drawing.
"""

from typing import List, Optional

from detectron2.data.catalog import Metadata

__all__ = ["class_names_from_metadata", "list_of_length"]


def list_of_length(metadata: Metadata, key: str, num_classes: int) -> Optional[list]:
    """``metadata.<key>`` as a list if it has ``num_classes`` entries, else None."""
    value = metadata.get(key, None)
    return list(value) if value is not None and len(value) == num_classes else None


def class_names_from_metadata(metadata: Metadata, num_classes: int) -> List[str]:
    """Names of the model's ``num_classes`` contiguous classes.

    ``stuff_classes`` lists every class in the panoptic data sets (things too), and
    ``thing_classes`` every class in instance-only data sets; whichever has ``num_classes``
    entries is used, else the classes are called "class 0", "class 1", ...
    """
    for key in ("stuff_classes", "thing_classes"):
        names = list_of_length(metadata, key, num_classes)
        if names is not None:
            return [str(name) for name in names]
    return [f"class {index}" for index in range(num_classes)]
