#!/usr/bin/env python
"""Convert COCO-Stuff-10k (cocostuff-10k-v1.1) to the detectron2 semantic layout.

Reads $DETECTRON2_DATASETS/coco/coco_stuff_10k/{imageLists,images,annotations}, writes
images_detectron2/{train,test}/ and annotations_detectron2/{train,test}/ (171 classes,
255 = unlabeled) for coco_2017_{train,test}_stuff_10k_sem_seg.
"""

import argparse
import os

from mask2former.data.datasets.register_coco_stuff_10k import coco_stuff_171_categories
from mask2former.data.preparation.cli import exit_on_missing_inputs
from mask2former.data.preparation.coco import convert_coco_stuff_10k


@exit_on_missing_inputs
def main() -> None:
    default = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "coco", "coco_stuff_10k")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=default, help=f"cocostuff-10k folder (default {default})")
    args = parser.parse_args()
    counts = convert_coco_stuff_10k(args.root, coco_stuff_171_categories())
    print(f"converted: {counts}")


if __name__ == "__main__":
    main()
