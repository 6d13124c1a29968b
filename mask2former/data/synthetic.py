"""A small synthetic panoptic data set ("shapes") that the project generates itself.

Each image shows textured *stuff* bands (sky, ground, water) with several *thing* shapes
(circle, triangle, square, cross) drawn on top. Shapes overlap (later ones occlude earlier
ones), vary in size and colour, and every thing class has both a distinctive outline and its
own colour range, so that a tiny model trained from scratch on a CPU learns the task in minutes.

The set is written in the three layouts the real data sets use::

    ROOT/images/{train,val}/000000.jpg              RGB images (JPEG)
    ROOT/annotations/instances_{train,val}.json    COCO instances: even image ids have
                                                   non-overlapping shapes with exact polygons,
                                                   odd ones overlapping shapes with RLE
    ROOT/annotations/panoptic_{train,val}.json     COCO panoptic segments
    ROOT/panoptic_{train,val}/000000.png           COCO panoptic PNGs (panopticapi id2rgb)
    ROOT/panoptic_semseg_{train,val}/000000.png    semantic PNGs (uint8, 255 = ignore)

Category ids are 1..4 for things and 5..7 for stuff; the contiguous id of a category is its id
minus one, in the semantic PNGs and in every registered data set (the convention of
``coco_2017_*_panoptic_with_sem_seg``). Generation is deterministic from the seed.

Command line::

    python -m mask2former.data.synthetic --root datasets/shapes --num-train 200 --num-val 50
"""

import argparse
import contextlib
import fcntl
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterator, List, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util
from panopticapi.utils import id2rgb

from .preparation.progress import progress

logger = logging.getLogger(__name__)

__all__ = [
    "SHAPES_CATEGORIES",
    "SyntheticConfig",
    "generate_synthetic_dataset",
    "ensure_generated",
    "ensure_synthetic_dataset",
    "is_synthetic_dataset_complete",
    "synthetic_split_paths",
]

# id: category id used in the JSON files; the contiguous id is id - 1.
# rgb_low / rgb_high: the range the object's base colour is drawn from (things only).
SHAPES_CATEGORIES: List[Dict] = [
    {"id": 1, "name": "circle", "isthing": 1, "color": [220, 20, 60]},
    {"id": 2, "name": "triangle", "isthing": 1, "color": [250, 210, 0]},
    {"id": 3, "name": "square", "isthing": 1, "color": [200, 0, 200]},
    {"id": 4, "name": "cross", "isthing": 1, "color": [0, 220, 60]},
    {"id": 5, "name": "sky", "isthing": 0, "color": [150, 190, 240]},
    {"id": 6, "name": "ground", "isthing": 0, "color": [130, 85, 45]},
    {"id": 7, "name": "water", "isthing": 0, "color": [25, 60, 130]},
]

# RGB ranges of each class's colour (inclusive low, exclusive high), per channel.
_THING_RGB_RANGES = {
    1: ((180, 0, 0), (256, 70, 70)),  # red circles
    2: ((200, 170, 0), (256, 240, 60)),  # yellow triangles
    3: ((150, 0, 150), (240, 60, 256)),  # magenta squares
    4: ((0, 170, 0), (80, 256, 90)),  # green crosses
}
_STUFF_RGB = {5: (150, 190, 240), 6: (130, 85, 45), 7: (25, 60, 130)}
_SKY, _GROUND, _WATER = 5, 6, 7
# Pixels on the border between two stuff bands are left unlabeled, as in real annotations.
_BORDER_WIDTH = 2
IGNORE_LABEL = 255
LABEL_DIVISOR = 1000
_DONE_MARKER = "GENERATED.json"
# tries to place a shape without overlap (images annotated with polygons)
_PLACEMENT_ATTEMPTS = 20
_FORMAT_VERSION = 2


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters that fully determine a generated set.

    Attributes:
        num_train: number of training images.
        num_val: number of validation images.
        seed: random seed; the same seed gives byte-identical files.
        size: height and width of the (square) images in pixels.
        min_things / max_things: number of shapes drawn per image (inclusive range); some
            images get none, so that loaders and mappers see empty images too.
        min_visible_area: shapes whose visible (un-occluded) area is smaller are dropped.
    """

    num_train: int = 200
    num_val: int = 50
    seed: int = 0
    size: int = 128
    min_things: int = 1
    max_things: int = 6
    min_visible_area: int = 80


def synthetic_split_paths(root: str, split: str) -> Dict[str, str]:
    """Paths of one split of the synthetic set under ``root``.

    Returns:
        dict with keys image_root, instances_json, panoptic_json, panoptic_root, sem_seg_root.
    """
    return {
        "image_root": os.path.join(root, "images", split),
        "instances_json": os.path.join(root, "annotations", f"instances_{split}.json"),
        "panoptic_json": os.path.join(root, "annotations", f"panoptic_{split}.json"),
        "panoptic_root": os.path.join(root, f"panoptic_{split}"),
        "sem_seg_root": os.path.join(root, f"panoptic_semseg_{split}"),
    }


def _textured_stuff(rng: np.random.Generator, category_id: int, size: int) -> np.ndarray:
    """A (size, size, 3) float RGB texture for one stuff class."""
    base = np.array(_STUFF_RGB[category_id], dtype=np.float32)
    base = base + rng.uniform(-15, 15, size=3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if category_id == _SKY:
        # vertical gradient, light at the horizon, plus faint noise
        tex = base[None, None] + (yy / size)[..., None] * 25.0
        tex += rng.normal(0, 3, size=(size, size, 1))
    elif category_id == _GROUND:
        # coarse speckles
        noise = rng.normal(0, 18, size=(size // 4 + 1, size // 4 + 1, 1)).astype(np.float32)
        noise = cv2.resize(noise, (size, size), interpolation=cv2.INTER_NEAREST)[..., None]
        tex = base[None, None] + noise + rng.normal(0, 6, size=(size, size, 1))
    else:
        # horizontal waves
        phase = rng.uniform(0, 2 * np.pi)
        freq = rng.uniform(0.3, 0.6)
        waves = np.sin(yy * freq + np.sin(xx * 0.15 + phase) * 2.0) * 18.0
        tex = base[None, None] + waves[..., None] + rng.normal(0, 4, size=(size, size, 1))
    return tex


def _stuff_layout(rng: np.random.Generator, size: int) -> Tuple[np.ndarray, List[int]]:
    """Horizontal bands with wavy borders.

    Returns:
        labels: (size, size) int array of stuff category ids.
        classes: stuff category ids present, top to bottom.
    """
    bottom = [_GROUND, _WATER]
    rng.shuffle(bottom)
    classes = [_SKY] + bottom if rng.random() < 0.85 else list(bottom)
    if rng.random() < 0.3:
        classes = classes[:-1]
    num_bands = len(classes)
    cuts = np.sort(rng.uniform(0.2, 0.8, size=num_bands - 1)) * size
    xs = np.arange(size, dtype=np.float32)
    yy = np.arange(size, dtype=np.float32)[:, None]
    labels = np.full((size, size), classes[-1], dtype=np.int32)
    # assign from the bottom band upwards: everything above border k belongs to band k
    for k in range(num_bands - 2, -1, -1):
        amp = rng.uniform(1.0, size * 0.06)
        freq = rng.uniform(0.02, 0.08)
        phase = rng.uniform(0, 2 * np.pi)
        border = cuts[k] + amp * np.sin(xs * freq + phase)
        labels[yy < border[None, :]] = classes[k]
    return labels, classes


def shape_polygon(category_id: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Vertices (K, 2) of a circle (32-gon), triangle, square or cross centred at (cx, cy),
    radius ~r, turned by ``angle`` radians."""
    if category_id == 1:
        t = angle + np.arange(32) * 2 * np.pi / 32
        pts = np.stack([np.cos(t), np.sin(t)], axis=1) * r
    elif category_id == 2:
        t = angle + np.arange(3) * 2 * np.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], axis=1) * r
    elif category_id == 3:
        t = angle + np.pi / 4 + np.arange(4) * np.pi / 2
        pts = np.stack([np.cos(t), np.sin(t)], axis=1) * r
    else:
        arm = 0.33
        unit = np.array(
            [
                [-arm, -1],
                [arm, -1],
                [arm, -arm],
                [1, -arm],
                [1, arm],
                [arm, arm],
                [arm, 1],
                [-arm, 1],
                [-arm, arm],
                [-1, arm],
                [-1, -arm],
                [-arm, -arm],
            ],
            dtype=np.float64,
        )
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        pts = unit @ rot.T * r
    return pts + np.array([cx, cy])


def _draw_thing(rng: np.random.Generator, category_id: int, size: int):
    """One random shape of the given class.

    Returns:
        (size, size) bool mask and its COCO polygon (flat [x0, y0, x1, y1, ...] list); the mask
        is exactly what pycocotools rasterises from the polygon.
    """
    r = rng.uniform(0.08, 0.25) * size
    cx, cy = rng.uniform(0, size, size=2)
    vertices = shape_polygon(category_id, cx, cy, r, rng.uniform(0, 2 * np.pi))
    polygon = [float(v) for v in np.round(vertices, 2).ravel()]
    rles = mask_util.frPyObjects([polygon], size, size)
    return mask_util.decode(mask_util.merge(rles)).astype(bool), polygon


def stuff_background(rng: np.random.Generator, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Textured stuff bands (sky, ground, water) with wavy borders.

    Returns:
        image: (size, size, 3) float32 RGB, not clipped.
        stuff: (size, size) int stuff category ids, 0 on the unlabeled borders between bands.
    """
    stuff, classes = _stuff_layout(rng, size)
    image = np.zeros((size, size, 3), dtype=np.float32)
    for cat in classes:
        region = stuff == cat
        image[region] = _textured_stuff(rng, cat, size)[region]
    # unlabeled borders between bands
    kernel = np.ones((_BORDER_WIDTH * 2 + 1, 1), dtype=np.uint8)
    border = np.zeros((size, size), dtype=bool)
    for cat in classes:
        region = (stuff == cat).astype(np.uint8)
        border |= (cv2.dilate(region, kernel) > 0) & (region == 0)
    return image, np.where(border, 0, stuff)


def thing_color(rng: np.random.Generator, category_id: int) -> np.ndarray:
    """(3,) float32 RGB base colour of a thing, drawn from its class's colour range."""
    low, high = _THING_RGB_RANGES[category_id]
    return rng.integers(low, high).astype(np.float32)


def _render_image(rng: np.random.Generator, cfg: SyntheticConfig, allow_overlap: bool):
    """Draw one image and its annotations.

    Args:
        allow_overlap: let shapes occlude each other; when False shapes never overlap, so each
            visible mask is exactly its polygon.

    Returns:
        image: (H, W, 3) uint8 RGB.
        stuff: (H, W) int stuff category ids, 0 on unlabeled band borders.
        things: list of (category_id, visible bool mask, polygon or None), in drawing order;
            the polygon is given when it rasterises to exactly the visible mask.
    """
    size = cfg.size
    image, stuff = stuff_background(rng, size)

    num = int(rng.integers(cfg.min_things, cfg.max_things + 1))
    if rng.random() < 0.05:
        num = 0
    drawn = []
    occupied = np.zeros((size, size), dtype=bool)
    for _ in range(num):
        cat = int(rng.integers(1, 5))
        for _attempt in range(_PLACEMENT_ATTEMPTS if not allow_overlap else 1):
            mask, polygon = _draw_thing(rng, cat, size)
            if allow_overlap or not (mask & occupied).any():
                break
        else:
            continue
        occupied |= mask
        color = thing_color(rng, cat)
        drawn.append((cat, mask, polygon, color))

    # visible part of each shape: later shapes occlude earlier ones; drop tiny leftovers
    covered = np.zeros((size, size), dtype=bool)
    kept = []
    for cat, mask, polygon, color in reversed(drawn):
        visible = mask & ~covered
        if visible.sum() < cfg.min_visible_area:
            continue
        covered |= mask
        kept.append((cat, mask, visible, polygon, color))
    kept.reverse()
    for _cat, mask, _visible, _polygon, color in kept:
        shade = color[None, :] + rng.normal(0, 5, size=(int(mask.sum()), 3))
        image[mask] = shade
    image = np.clip(image, 0, 255).astype(np.uint8)
    things = [
        (cat, visible, None if allow_overlap else polygon) for cat, _m, visible, polygon, _c in kept
    ]
    return image, stuff, things


def mask_bbox(mask: np.ndarray) -> List[int]:
    """[x, y, w, h] of the pixels of a non-empty (H, W) bool mask."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]


def mask_rle(mask: np.ndarray) -> Dict:
    """COCO RLE of an (H, W) mask, "counts" as str (JSON-ready)."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _write_split(
    root: str, split: str, num_images: int, rng, cfg: SyntheticConfig, show_progress: bool
) -> None:
    paths = synthetic_split_paths(root, split)
    for key in ("image_root", "panoptic_root", "sem_seg_root"):
        os.makedirs(paths[key], exist_ok=True)
    os.makedirs(os.path.dirname(paths["instances_json"]), exist_ok=True)

    images, inst_anns, pan_anns = [], [], []
    ann_id = 1
    for image_id in progress(range(num_images), f"shapes {split}", num_images, show_progress):
        # even images: non-overlapping shapes annotated with exact polygons; odd images:
        # overlapping shapes annotated with RLE of their visible parts
        image, stuff, things = _render_image(rng, cfg, allow_overlap=image_id % 2 == 1)
        stem = f"{image_id:06d}"
        cv2.imwrite(
            os.path.join(paths["image_root"], stem + ".jpg"),
            image[:, :, ::-1],
            [cv2.IMWRITE_JPEG_QUALITY, 95],
        )
        size = cfg.size
        images.append({"id": image_id, "file_name": stem + ".jpg", "height": size, "width": size})

        pan = np.zeros((size, size), dtype=np.int64)
        segments = []
        thing_area = np.zeros((size, size), dtype=bool)
        for _cat, visible, _polygon in things:
            thing_area |= visible
        for cat in sorted({int(c) for c in np.unique(stuff)} - {0}):
            region = (stuff == cat) & ~thing_area
            if region.any():
                seg_id = cat * LABEL_DIVISOR
                pan[region] = seg_id
                segments.append(_segment_info(seg_id, cat, region))
        for k, (cat, visible, polygon) in enumerate(things):
            seg_id = cat * LABEL_DIVISOR + k + 1
            pan[visible] = seg_id
            segments.append(_segment_info(seg_id, cat, visible))
            segmentation = [polygon] if polygon is not None else mask_rle(visible)
            inst_anns.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": cat,
                    "segmentation": segmentation,
                    "area": int(visible.sum()),
                    "bbox": mask_bbox(visible),
                    "iscrowd": 0,
                }
            )
            ann_id += 1
        cv2.imwrite(os.path.join(paths["panoptic_root"], stem + ".png"), id2rgb(pan)[:, :, ::-1])
        pan_anns.append(
            {"image_id": image_id, "file_name": stem + ".png", "segments_info": segments}
        )

        semantic = np.full((size, size), IGNORE_LABEL, dtype=np.uint8)
        for seg in segments:
            semantic[pan == seg["id"]] = seg["category_id"] - 1
        cv2.imwrite(os.path.join(paths["sem_seg_root"], stem + ".png"), semantic)

    info = {"description": "synthetic shapes", "version": str(_FORMAT_VERSION)}
    things_only = [c for c in SHAPES_CATEGORIES if c["isthing"]]
    dump_json(
        paths["instances_json"],
        {"info": info, "images": images, "annotations": inst_anns, "categories": things_only},
    )
    dump_json(
        paths["panoptic_json"],
        {
            "info": info,
            "images": images,
            "annotations": pan_anns,
            "categories": SHAPES_CATEGORIES,
        },
    )


def _segment_info(seg_id: int, category_id: int, mask: np.ndarray) -> Dict:
    return {
        "id": int(seg_id),
        "category_id": int(category_id),
        "iscrowd": 0,
        "area": int(mask.sum()),
        "bbox": mask_bbox(mask),
    }


def dump_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


def generate_synthetic_dataset(
    root: str, cfg: SyntheticConfig = SyntheticConfig(), *, show_progress: bool = False
) -> None:
    """Write the synthetic set into ``root`` (which should be empty or absent).

    Writes the done-marker last, so an interrupted generation is detected and redone by
    :func:`ensure_synthetic_dataset`. The training split draws from the seed's first child
    stream and the validation split from the second, so changing ``num_train`` does not
    change the validation images.
    """
    seeds = np.random.SeedSequence(cfg.seed).spawn(2)
    for split, num, seed in (("train", cfg.num_train, seeds[0]), ("val", cfg.num_val, seeds[1])):
        _write_split(root, split, num, np.random.default_rng(seed), cfg, show_progress)
    marker = dict(asdict(cfg), format_version=_FORMAT_VERSION)
    dump_json(os.path.join(root, _DONE_MARKER), marker)


def _read_marker(root: str):
    path = os.path.join(root, _DONE_MARKER)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def is_synthetic_dataset_complete(root: str) -> bool:
    """Whether ``root`` holds a completely generated synthetic set (any parameters)."""
    return _read_marker(root) is not None


@contextlib.contextmanager
def _exclusive_lock(directory: str) -> Iterator[None]:
    """Hold an exclusive flock on ``directory`` (no lock file is left behind)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def ensure_generated(
    root: str,
    marker: Dict,
    generate: Callable[[str], None],
    *,
    overwrite: bool = False,
    what: str = "synthetic data set",
) -> str:
    """Run ``generate`` into ``root`` unless ``root`` already holds what it generates.

    Idempotent and safe to call from several processes at once (a lock on the parent folder
    serialises them). ``generate(folder)`` writes into a temporary folder, which is moved into
    place with the done-marker ``marker`` (written last), so an interrupted run never leaves a
    half-written ``root`` behind.

    Args:
        root: destination folder.
        marker: JSON-able dict of the generation parameters, with a "format_version".
        generate: writes the set into the folder it is given.
        overwrite: regenerate when ``root`` holds a set generated with other parameters;
            when False such a set is kept as it is. A set of another ``format_version`` is
            always regenerated.
        what: the set, in log messages.

    Returns:
        ``root``.
    """
    root = os.path.abspath(root)
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    with _exclusive_lock(parent):
        found = _read_marker(root)
        current_format = (
            found is not None and found.get("format_version") == marker["format_version"]
        )
        if found == marker or (current_format and not overwrite):
            if found != marker:
                logger.info("Keeping the %s in %s generated with %s", what, root, found)
            return root
        tmp = f"{root}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        logger.info("Generating the %s in %s (%s)", what, root, marker)
        generate(tmp)
        dump_json(os.path.join(tmp, _DONE_MARKER), marker)
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)
    return root


def ensure_synthetic_dataset(
    root: str,
    cfg: SyntheticConfig = SyntheticConfig(),
    *,
    overwrite: bool = False,
    show_progress: bool = False,
) -> str:
    """Generate the synthetic set into ``root`` unless it is already there
    (:func:`ensure_generated`).

    Args:
        root: destination folder, e.g. ``$DETECTRON2_DATASETS/shapes``.
        cfg: generation parameters.
        overwrite: regenerate when ``root`` holds a set generated with other parameters;
            when False such a set is kept as it is. A set written by an older version of
            this generator (another ``format_version``) is always regenerated.
        show_progress: show a progress bar while generating.

    Returns:
        ``root``.
    """
    return ensure_generated(
        root,
        dict(asdict(cfg), format_version=_FORMAT_VERSION),
        lambda folder: generate_synthetic_dataset(folder, cfg, show_progress=show_progress),
        overwrite=overwrite,
        what="synthetic shapes data set",
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Generate the synthetic 'shapes' data set.")
    default_root = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "shapes")
    parser.add_argument("--root", default=default_root, help=f"output folder ({default_root})")
    defaults = SyntheticConfig()
    parser.add_argument("--num-train", type=int, default=defaults.num_train)
    parser.add_argument("--num-val", type=int, default=defaults.num_val)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--size", type=int, default=defaults.size, help="image side in pixels")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="regenerate when ROOT holds a set generated with other parameters",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = SyntheticConfig(
        num_train=args.num_train, num_val=args.num_val, seed=args.seed, size=args.size
    )
    root = ensure_synthetic_dataset(args.root, cfg, overwrite=args.overwrite, show_progress=True)
    logger.info("Synthetic set ready in %s", root)


if __name__ == "__main__":
    main()
