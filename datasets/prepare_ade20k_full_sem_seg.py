#!/usr/bin/env python
"""Convert the ADE20K release (ADE20K_2021_17_01) to the 847-class ade20k_full_sem_seg_* layout.

Reads $DETECTRON2_DATASETS/ADE20K_2021_17_01/index_ade20k.pkl and the images/_seg.png masks,
writes images_detectron2/, annotations_detectron2/ (uint16 TIFF, 65535 = ignore) and
ade20k_full_categories.json (class names taken from the release's index).
"""

import argparse
import os

from mask2former.data.preparation.ade20k_full import convert_ade20k_full
from mask2former.data.preparation.cli import exit_on_missing_inputs


@exit_on_missing_inputs
def main() -> None:
    default = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "ADE20K_2021_17_01")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=default, help=f"ADE20K_2021_17_01 folder ({default})")
    args = parser.parse_args()
    num_classes = convert_ade20k_full(args.root)
    print(f"kept {num_classes} classes (present in both training and validation)")


if __name__ == "__main__":
    main()
