#!/usr/bin/env python
"""Write COCO semantic PNGs (133 classes, 255 = unlabeled) from the panoptic annotations.

Reads $DETECTRON2_DATASETS/coco/annotations/panoptic_{train,val}2017.json and
panoptic_{train,val}2017/, writes panoptic_semseg_{train,val}2017/ (the semantic maps of
coco_2017_{train,val}_panoptic_with_sem_seg). Labels are positions in detectron2's
COCO_CATEGORIES, things and stuff alike.
"""

import argparse
import os

from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from mask2former.data.preparation.cli import exit_on_missing_inputs
from mask2former.data.preparation.coco import convert_panoptic_to_semantic


@exit_on_missing_inputs
def main() -> None:
    default = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "coco")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco-root", default=default, help=f"COCO folder (default {default})")
    args = parser.parse_args()
    for split in ("val2017", "train2017"):
        count = convert_panoptic_to_semantic(
            os.path.join(args.coco_root, "annotations", f"panoptic_{split}.json"),
            os.path.join(args.coco_root, f"panoptic_{split}"),
            os.path.join(args.coco_root, f"panoptic_semseg_{split}"),
            COCO_CATEGORIES,
        )
        print(f"{split}: wrote {count} semantic PNGs")


if __name__ == "__main__":
    main()
