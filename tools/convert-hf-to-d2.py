#!/usr/bin/env python
"""Convert a Hugging Face transformers Mask2Former folder into our checkpoint and config.

Usage:
    hf download facebook/mask2former-swin-tiny-coco-panoptic --local-dir hf-swin-tiny-coco-panoptic
    python tools/convert-hf-to-d2.py hf-swin-tiny-coco-panoptic output/swin-tiny-coco-panoptic
    python demo/demo.py --config-file output/swin-tiny-coco-panoptic/config.yaml --input img.jpg \
        --output output/demo

SRC is a folder written by ``save_pretrained`` (config.json + safetensors; Swin backbone). DST
receives model_final.pth, config.yaml (the whole config, MODEL.WEIGHTS set) and metadata.json
(the classes, registered by the config). Trailing KEY VALUE pairs are written into config.yaml.
See mask2former/interop/huggingface.py.
"""

import argparse
import sys

from mask2former.interop.huggingface import convert_hf_to_d2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="Hugging Face model folder (config.json + safetensors)")
    parser.add_argument("dst", help="output folder")
    parser.add_argument(
        "--task",
        choices=["panoptic", "instance", "semantic"],
        help="outputs to switch on (default: the task the folder name announces, else all)",
    )
    parser.add_argument(
        "--stuff-classes",
        nargs="+",
        metavar="ID_OR_NAME",
        help="classes whose segments panoptic inference merges (transformers' "
        "label_ids_to_fuse; default: those stored in the folder, else none)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    try:
        paths = convert_hf_to_d2(
            args.src, args.dst, task=args.task, stuff_classes=args.stuff_classes, opts=args.opts
        )
    except (FileNotFoundError, ImportError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
