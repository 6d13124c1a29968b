#!/usr/bin/env python
"""Write ADE20K-150 panoptic annotations (COCO panoptic format) for ade20k_panoptic_*.

Reads $DETECTRON2_DATASETS/ADEChallengeData2016/{images,annotations,annotations_instance}/
and categoryMapping.txt (from the ADE20K instance segmentation release), writes
ade20k_panoptic_{train,val}/, ade20k_panoptic_{train,val}.json and
ade20k_panoptic_categories.json. Run prepare_ade20k_sem_seg.py too (semantic maps).
"""

import argparse
import os

from mask2former.data.preparation.ade20k import convert_ade20k_panoptic
from mask2former.data.preparation.cli import exit_on_missing_inputs


@exit_on_missing_inputs
def main() -> None:
    default = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "ADEChallengeData2016")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ade-root", default=default, help=f"ADEChallengeData2016 ({default})")
    args = parser.parse_args()
    print(f"converted: {convert_ade20k_panoptic(args.ade_root)}")


if __name__ == "__main__":
    main()
