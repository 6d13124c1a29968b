"""Config keys of Mask2Former and a config loader with helpful errors.

`add_maskformer2_config` declares every key the official Mask2Former YAML files use, with the
official names, defaults and meanings, so those files merge unchanged. Keys that are not in the
official release say so in their comment; they turn constants the official code hard-coded into
config values whose defaults reproduce the official behaviour.

Keys that Mask2Former reads from detectron2's own defaults (not declared here):
``MODEL.SEM_SEG_HEAD.{NAME, IN_FEATURES, NUM_CLASSES, IGNORE_VALUE, CONVS_DIM, COMMON_STRIDE,
NORM, LOSS_WEIGHT}`` and ``TEST.DETECTIONS_PER_IMAGE`` (the number of instances kept per image
by instance inference, default 100). ``IGNORE_VALUE`` is the label of unlabeled pixels for data
sets whose metadata has no ``ignore_label``; where it has one, the dataset mappers use that
and log a config that disagrees (Mapillary Vistas: 65).
"""

import argparse
import copy
import difflib
import os
from typing import Any, Dict, List, Optional, Sequence

from detectron2.config import CfgNode, get_cfg
from detectron2.projects.deeplab import add_deeplab_config
from detectron2.utils.file_io import PathManager

from .data.datasets.catalog_utils import register_metadata_file

__all__ = [
    "UnknownConfigKeyError",
    "add_maskformer2_config",
    "add_opts_argument",
    "load_config",
    "merge_overrides",
]


def add_maskformer2_config(cfg: CfgNode) -> None:
    """Declare the Mask2Former config keys on `cfg` (in place).

    Also declares the DeepLab-style ResNet keys (``MODEL.RESNETS.STEM_TYPE``,
    ``MODEL.RESNETS.RES5_MULTI_GRID``, ``SOLVER.POLY_LR_*``, ...) through detectron2's
    `add_deeplab_config`, because the official YAML files carry them. Only missing keys are
    added: a key that `cfg` already has keeps its value. So the function is idempotent, may be
    called before or after `add_deeplab_config` (as the official train_net did), and completes
    a config prepared for MaskFormer (v1), which has ``MODEL.MASK_FORMER`` without the
    Mask2Former keys.

    Args:
        cfg: a detectron2 config, usually from `detectron2.config.get_cfg()`; must not be frozen.
    """
    declared = get_cfg()
    add_deeplab_config(declared)
    _add_input_config(declared)
    _add_data_config(declared)
    _add_solver_config(declared)
    _add_test_config(declared)
    _add_model_ema_config(declared)
    _add_mask_former_config(declared)
    _add_pixel_decoder_config(declared)
    _add_swin_config(declared)
    _add_missing_keys(cfg, declared)


def _add_missing_keys(cfg: CfgNode, declared: CfgNode) -> None:
    """Copy into `cfg` every key of `declared` that `cfg` lacks, recursively."""
    for name, value in declared.items():
        if name not in cfg:
            cfg[name] = copy.deepcopy(value)
        elif isinstance(value, CfgNode) and isinstance(cfg[name], CfgNode):
            _add_missing_keys(cfg[name], value)


def _add_input_config(cfg: CfgNode) -> None:
    # Name of the training dataset mapper: "mask_former_semantic", "mask_former_panoptic",
    # "mask_former_instance", "coco_instance_lsj" or "coco_panoptic_lsj".
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    # Apply the SSD-style photometric (brightness/contrast/saturation/hue) augmentation.
    cfg.INPUT.COLOR_AUG_SSD = False
    # Random crops are retried until no single semantic category covers more than this fraction
    # of the crop (1.0 = accept any crop). Same key and default as detectron2's DeepLab project.
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    # Despite its name, a fixed pad size in the official configs: their crops are never larger
    # than it, so the training mappers pad each cropped image (and its ground truth, with the
    # ignore value) on the bottom/right to exactly SIZE_DIVISIBILITY x SIZE_DIVISIBILITY
    # (e.g. 512 in the ADE20K semantic configs, whose crop is 512); a larger image is padded up
    # to the next multiple. -1 disables this padding. Kept for compatibility with the official
    # YAML files.
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    # Large-scale jittering ("*_lsj" mappers): output side of the square training crop, in pixels.
    cfg.INPUT.IMAGE_SIZE = 1024
    # Large-scale jittering: smallest random rescale factor, relative to IMAGE_SIZE.
    cfg.INPUT.MIN_SCALE = 0.1
    # Large-scale jittering: largest random rescale factor, relative to IMAGE_SIZE.
    cfg.INPUT.MAX_SCALE = 2.0
    # Video instance segmentation (VideoMaskFormer, YouTube-VIS): frames per training clip.
    # The video mapper also reads detectron2's INPUT keys with values of its own:
    # MIN_SIZE_TRAIN_SAMPLING "choice_by_clip" / "range_by_clip" draws one size per clip
    # ("choice" / "range": one per frame), and RANDOM_FLIP "flip_by_clip" flips a whole clip
    # horizontally or not ("horizontal" / "vertical": decided per frame).
    cfg.INPUT.SAMPLING_FRAME_NUM = 2
    # Video: a training clip is a random reference frame and SAMPLING_FRAME_NUM - 1 frames
    # drawn (with replacement) at most this many frames before or after it.
    cfg.INPUT.SAMPLING_FRAME_RANGE = 20
    # Video: shuffle the frames of a training clip instead of keeping their order in time.
    cfg.INPUT.SAMPLING_FRAME_SHUFFLE = False
    # Video: extra training augmentations, drawn once per clip, among "brightness",
    # "contrast", "saturation" and "rotation".
    cfg.INPUT.AUGMENTATIONS = []


def _add_data_config(cfg: CfgNode) -> None:
    # Not in the official release: a text file listing images to leave out of training, one
    # image id or image file name per line ("#" starts a comment), as written by
    # `datasets/check_dataset.py --write-exclude FILE`; "" leaves nothing out.
    cfg.DATASETS.EXCLUDE_FILE = ""
    # Not in the official release: a JSON class table ({"name": ..., "categories": [{"id",
    # "name", "isthing"}, ...]}, e.g. written by tools/convert-hf-to-d2.py) that load_config
    # registers as the metadata called "name", so that a model without a registered data set
    # has class names and thing classes. A relative path is relative to the config file's
    # folder; "" for none.
    cfg.DATASETS.METADATA_FILE = ""
    # Not in the official release: a sample that cannot be read or mapped is logged, replaced by
    # another one in training and left out of the metrics in evaluation; when more than this
    # fraction of a data set's images are bad, training or evaluation stops with a summary.
    cfg.DATALOADER.MAX_BAD_SAMPLE_FRACTION = 0.01


def _add_solver_config(cfg: CfgNode) -> None:
    # Weight decay of embedding parameters (learnable queries, query positions, level
    # embeddings, Swin position tables) instead of SOLVER.WEIGHT_DECAY.
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # Optimizer: "ADAMW" or "SGD".
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    # Learning-rate multiplier of the backbone parameters.
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    # Not in the official release (which trained in float16): autocast dtype when
    # SOLVER.AMP.ENABLED, "float16" (with loss scaling) or "bfloat16".
    cfg.SOLVER.AMP.PRECISION = "float16"
    # Not in the official release: gradient accumulation. Each iteration (one optimizer step,
    # as MAX_ITER, STEPS and the checkpoint and evaluation periods count them) sums the
    # gradients of this many batches of SOLVER.IMS_PER_BATCH / (this x processes) images per
    # process, so IMS_PER_BATCH stays the images per optimizer step and an official recipe
    # (16 images) trains on fewer or smaller GPUs with its learning rate and schedule
    # unchanged. The losses are normalised as they would be on (this x processes) processes.
    cfg.SOLVER.GRADIENT_ACCUMULATION_STEPS = 1
    # Not in the official release: train_net.py and the quickstart also save the final model's
    # weights as OUTPUT_DIR/model_final.safetensors (the format to share weights in).
    cfg.SOLVER.SAVE_SAFETENSORS = False
    # Not in the official release: keep OUTPUT_DIR/model_best.pth, the weights of the best
    # evaluation during training (needs TEST.EVAL_PERIOD > 0), by METRIC as the results name
    # it ("panoptic_seg/PQ", "segm/AP", "sem_seg/mIoU", ...; "" = the first test data set's
    # headline metric: PQ, else mask AP, else mIoU), the highest (MODE "max") or lowest ("min").
    # Its value and iteration go to model_best.json, which --resume reads back.
    cfg.SOLVER.BEST_CHECKPOINTER = CfgNode()
    cfg.SOLVER.BEST_CHECKPOINTER.ENABLED = False
    cfg.SOLVER.BEST_CHECKPOINTER.METRIC = ""
    cfg.SOLVER.BEST_CHECKPOINTER.MODE = "max"


def _add_test_config(cfg: CfgNode) -> None:
    # Not in the official release (whose tools/evaluate_coco_boundary_ap.py scores a saved
    # results file): COCO-style instance evaluation also reports boundary AP, mask AP with
    # min(mask IoU, Boundary IoU) as the IoU, under "boundary" (mask2former/engine/boundary_ap.py).
    cfg.TEST.BOUNDARY_AP = CfgNode()
    cfg.TEST.BOUNDARY_AP.ENABLED = False
    # Width of the boundary region, as a fraction of the image diagonal (0.02: Boundary IoU's).
    cfg.TEST.BOUNDARY_AP.DILATION_RATIO = 0.02
    # Not in the official release (which evaluates in float32): evaluation (train_net.py
    # --eval-only, TEST.EVAL_PERIOD, TTA) runs the model's forwards under autocast in
    # PRECISION, "float16" or "bfloat16", as SOLVER.AMP does for training; the post-processing
    # stays float32. On a CPU, float16 falls back to float32 with a warning.
    cfg.TEST.AMP = CfgNode()
    cfg.TEST.AMP.ENABLED = False
    cfg.TEST.AMP.PRECISION = "float16"


def _add_model_ema_config(cfg: CfgNode) -> None:
    # Not in the official release (the key names are d2go's and detrex's): an exponential
    # moving average of the weights during training (mask2former/engine/ema.py). Evaluation
    # during training evaluates the average; checkpoints hold it under "ema".
    cfg.MODEL_EMA = CfgNode()
    cfg.MODEL_EMA.ENABLED = False
    # After each optimizer step: average = decay * average + (1 - decay) * weights.
    cfg.MODEL_EMA.DECAY = 0.9999
    # The decay ramps up as DECAY * (1 - exp(-steps / WARMUP_ITERS)); 0 = DECAY from the start.
    cfg.MODEL_EMA.WARMUP_ITERS = 2000
    # Where the average lives: "" = the model's device; "cpu" saves GPU memory, costs a copy of
    # the weights to the CPU every step and evaluates the average on the CPU.
    cfg.MODEL_EMA.DEVICE = ""
    # Evaluation during training also evaluates the raw weights, its results named "raw/...".
    cfg.MODEL_EMA.EVAL_RAW_WEIGHTS = True
    # Inference of a checkpoint that holds an average (--eval-only, the demo, Predictor,
    # export) uses the average; False uses the raw weights.
    cfg.MODEL_EMA.USE_FOR_INFERENCE = True


def _add_mask_former_config(cfg: CfgNode) -> None:
    # Settings of the mask-classification model (meta-architecture, transformer decoder, losses).
    cfg.MODEL.MASK_FORMER = CfgNode()

    # Add the losses of every intermediate prediction (auxiliary losses).
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = True
    # Cross-entropy weight of the "no object" class (the other classes have weight 1).
    cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.1
    # Weight of the classification loss and of the class cost in the Hungarian matcher.
    cfg.MODEL.MASK_FORMER.CLASS_WEIGHT = 1.0
    # Weight of the dice loss and of the dice cost in the Hungarian matcher.
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 1.0
    # Weight of the sigmoid binary cross-entropy mask loss and of its matcher cost.
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 20.0

    # Number of attention heads of the transformer decoder (and, in the official release, of the
    # pixel decoder's deformable encoder; see SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS).
    cfg.MODEL.MASK_FORMER.NHEADS = 8
    # Dropout of the pixel decoder's deformable encoder layers; the masked-attention transformer
    # decoder uses no dropout.
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.1
    # Hidden width of the transformer decoder's feed-forward networks.
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 2048
    # Transformer encoder layers of the original MaskFormer predictor. Kept so that
    # MaskFormer-style YAML files merge; MultiScaleMaskedTransformerDecoder has no encoder.
    cfg.MODEL.MASK_FORMER.ENC_LAYERS = 0
    # Number of predictions, not of decoder layers: the prediction made from the learnable
    # queries before any layer counts as one, so the decoder has DEC_LAYERS - 1 layers
    # (the official 10 = 9 layers + 1) and there are DEC_LAYERS - 1 auxiliary predictions.
    # Kept for compatibility with the official YAML files.
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 6
    # Use pre-norm (LayerNorm before attention/FFN) instead of post-norm decoder layers.
    cfg.MODEL.MASK_FORMER.PRE_NORM = False
    # Width of the query features and of the transformer decoder.
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 256
    # Number of learnable queries, i.e. of predicted (mask, class) pairs per image.
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 100
    # Which features feed the transformer decoder. "multi_scale_pixel_decoder" (what every
    # Mask2Former config sets) means the pixel decoder's multi-scale outputs; the default "res5"
    # is the original MaskFormer's choice of a single feature map.
    cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE = "res5"
    # Project the features entering the transformer decoder with a 1x1 conv even when their
    # channel count already equals HIDDEN_DIM.
    cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = False
    # Not in the official release (hard-coded 0.5 there): the decoder lets a query attend to a
    # pixel when its previous mask prediction there has sigmoid probability >= this value.
    cfg.MODEL.MASK_FORMER.MASK_ATTENTION_THRESHOLD = 0.5
    # Not in the official release (hard-coded 3 there): number of pixel-decoder feature maps
    # (1/32, 1/16, 1/8, low resolution first) the transformer decoder cycles through.
    cfg.MODEL.MASK_FORMER.NUM_FEATURE_LEVELS = 3

    # Inference settings.
    cfg.MODEL.MASK_FORMER.TEST = CfgNode()
    # Return "sem_seg": per-class probabilities (K, H, W).
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = True
    # Return "instances": the top TEST.DETECTIONS_PER_IMAGE (query, class) pairs.
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = False
    # Return "panoptic_seg": (segment-id map, segments_info).
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False
    # Panoptic inference drops queries whose class score is not above this value.
    cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = 0.0
    # Panoptic inference drops a segment when less than this fraction of its mask survives the
    # overlap resolution with other segments.
    cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD = 0.0
    # Resize the mask predictions to the output height/width before inference (True), or run
    # semantic inference at the padded input size and resize its result afterwards (False).
    cfg.MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False
    # Not in the official release (hard-coded 0.5 there): probability at which mask predictions
    # are binarised in panoptic and instance inference.
    cfg.MODEL.MASK_FORMER.TEST.MASK_THRESHOLD = 0.5
    # Not in the official release (which always does it): in eval mode, make the transformer
    # decoder's earlier predictions at full size and return them as "aux_outputs", with each
    # attention mask resized from them as in training. False makes each attention mask at its
    # feature level's resolution instead: equal up to float rounding, and faster.
    cfg.MODEL.MASK_FORMER.TEST.AUX_OUTPUTS_IN_EVAL = False
    # Not in the official release (hard-coded 10 there): VideoMaskFormer returns this many
    # (query, class) pairs per video, the highest class scores.
    cfg.MODEL.MASK_FORMER.TEST.DETECTIONS_PER_VIDEO = 10
    # Not in the official release (which runs every frame of a video through the backbone and
    # the pixel decoder at once): at inference VideoMaskFormer runs them this many frames at a
    # time, keeping only the features the transformer decoder reads, so a video's memory grows
    # by those, not by the backbone's activations; the results are the same. 0: all at once.
    cfg.MODEL.MASK_FORMER.TEST.FRAMES_PER_PASS = 4
    # Not in the official release (where a video's memory grows with its length until it runs
    # out): VideoMaskFormer runs a video longer than CLIP_LENGTH frames through the transformer
    # decoder in clips of that many frames, consecutive clips sharing CLIP_OVERLAP frames, and
    # links the clips' queries into tracks by their embeddings and their masks on the shared
    # frames. 0: the whole video at once, as in the release.
    cfg.MODEL.MASK_FORMER.TEST.CLIP_LENGTH = 0
    cfg.MODEL.MASK_FORMER.TEST.CLIP_OVERLAP = 0
    # Not in the official release: inference in overlapping windows, for images too large for
    # one forward. Each window's outputs are computed at its own resolution; semantic scores
    # are averaged where windows overlap; instances of one class from different windows whose
    # masks' intersection covers at least MERGE_THRESHOLD of the smaller mask are merged (their
    # union, the higher score); the panoptic output is made of those instances (things) and
    # semantic scores (stuff) as Panoptic FPN combines them, with its
    # MODEL.PANOPTIC_FPN.COMBINE thresholds. SIZE and STRIDE are (height, width) in pixels of
    # the model's input, after the test-time resize (INPUT.MIN_SIZE_TEST 0 keeps the original
    # resolution); WINDOWS_PER_PASS windows run in one forward.
    cfg.MODEL.MASK_FORMER.TEST.SLIDING_WINDOW = CfgNode()
    cfg.MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.ENABLED = False
    cfg.MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.SIZE = [512, 512]
    cfg.MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.STRIDE = [341, 341]
    cfg.MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.WINDOWS_PER_PASS = 1
    cfg.MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.MERGE_THRESHOLD = 0.5

    # Images of a batch are padded to a multiple of this; a negative value uses the backbone's
    # size_divisibility (which is 0 for detectron2's ResNet).
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32
    # Name of the transformer decoder in TRANSFORMER_DECODER_REGISTRY.
    cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"

    # Number of points sampled per mask for the matcher costs and the mask losses.
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 112 * 112
    # Importance sampling (PointRend's k): draw OVERSAMPLE_RATIO * TRAIN_NUM_POINTS candidates.
    cfg.MODEL.MASK_FORMER.OVERSAMPLE_RATIO = 3.0
    # Importance sampling (PointRend's beta): fraction of the points taken where the prediction is
    # most uncertain; the rest are uniform.
    cfg.MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO = 0.75


def _add_pixel_decoder_config(cfg: CfgNode) -> None:
    # Channels of the per-pixel mask features (1/4 resolution) that query embeddings are
    # multiplied with.
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    # Number of transformer (deformable) encoder layers in the pixel decoder.
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 0
    # Name of the pixel decoder in PIXEL_DECODER_REGISTRY.
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "BasePixelDecoder"
    # Backbone features processed by the pixel decoder's deformable encoder.
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    # Sampling points per head and level of the deformable attention. Declared but not read by
    # the official release, which hard-coded the same value 4.
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4
    # Heads of the deformable attention. Declared but not read by the official release, which
    # used MASK_FORMER.NHEADS (8 in every official config, the same value).
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8
    # Not in the official release (hard-coded 1024 there): hidden width of the feed-forward
    # networks of the pixel decoder's deformable encoder layers.
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD = 1024
    # Not in the official release (hard-coded 32 there): number of groups of the pixel decoder's
    # GroupNorm layers (input projections, and lateral/output convs when NORM is "GN").
    cfg.MODEL.SEM_SEG_HEAD.NORM_NUM_GROUPS = 32


def _add_swin_config(cfg: CfgNode) -> None:
    # Swin Transformer backbone (D2SwinTransformer).
    cfg.MODEL.SWIN = CfgNode()
    # Image size of the ImageNet pre-training (224 or 384); sizes the absolute position
    # embedding when APE is on.
    cfg.MODEL.SWIN.PRETRAIN_IMG_SIZE = 224
    # Side of the square patches embedded by the first (strided) conv.
    cfg.MODEL.SWIN.PATCH_SIZE = 4
    # Channels of the first stage; stage i has EMBED_DIM * 2**i channels.
    cfg.MODEL.SWIN.EMBED_DIM = 96
    # Number of Swin blocks in each of the four stages.
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]
    # Attention heads in each of the four stages.
    cfg.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]
    # Side of the square attention windows (7 for 224 pre-training, 12 for 384).
    cfg.MODEL.SWIN.WINDOW_SIZE = 7
    # Hidden width of the block MLPs, relative to the stage's channels.
    cfg.MODEL.SWIN.MLP_RATIO = 4.0
    # Learn a bias in the query/key/value projection.
    cfg.MODEL.SWIN.QKV_BIAS = True
    # Attention logit scale; None means head_dim ** -0.5.
    cfg.MODEL.SWIN.QK_SCALE = None
    # Dropout after the patch embedding, in the MLPs and after the attention projection.
    cfg.MODEL.SWIN.DROP_RATE = 0.0
    # Dropout on the attention weights.
    cfg.MODEL.SWIN.ATTN_DROP_RATE = 0.0
    # Stochastic depth: drop-path rate of the last block, increasing linearly from 0.
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.3
    # Add a learnable absolute position embedding to the patch embedding.
    cfg.MODEL.SWIN.APE = False
    # LayerNorm after the patch embedding.
    cfg.MODEL.SWIN.PATCH_NORM = True
    # Stage outputs to return, among "res2" (stride 4) to "res5" (stride 32).
    cfg.MODEL.SWIN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Recompute block activations in the backward pass (gradient checkpointing) to save memory.
    cfg.MODEL.SWIN.USE_CHECKPOINT = False
    # Not in the official release (whose Swin hard-codes -1): the Swin reference code's
    # frozen_stages, e.g. to fine-tune on a small data set. -1 trains everything, 0 freezes the
    # patch embedding, k also the first k stages (with their output norms and patch merging);
    # frozen parts get no gradients and stay in eval mode (no drop path). ResNet backbones use
    # Detectron2's MODEL.BACKBONE.FREEZE_AT instead.
    cfg.MODEL.SWIN.FROZEN_STAGES = -1


class UnknownConfigKeyError(KeyError):
    """A config file or override names a key that is not declared."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _all_keys(cfg: CfgNode, prefix: str = "") -> List[str]:
    keys = []
    for name, value in cfg.items():
        full_name = prefix + name
        keys.append(full_name)
        if isinstance(value, CfgNode):
            keys.extend(_all_keys(value, full_name + "."))
    return keys


def _unknown_keys(loaded: Dict[str, Any], reference: CfgNode, prefix: str = "") -> List[str]:
    unknown = []
    for name, value in loaded.items():
        full_name = prefix + name
        if name not in reference:
            if not reference.is_new_allowed():
                unknown.append(full_name)
        elif isinstance(value, dict) and isinstance(reference[name], CfgNode):
            unknown.extend(_unknown_keys(value, reference[name], full_name + "."))
    return unknown


_MISSING = object()


def _find_node(cfg: CfgNode, full_key: str) -> Any:
    """The value at dotted `full_key` ("" is `cfg` itself), or `_MISSING` if not declared."""
    node = cfg
    for name in filter(None, full_key.split(".")):
        if not isinstance(node, CfgNode) or name not in node:
            return _MISSING
        node = node[name]
    return node


def _has_key(cfg: CfgNode, full_key: str) -> bool:
    return bool(full_key) and _find_node(cfg, full_key) is not _MISSING


def _close_keys(key: str, cfg: CfgNode) -> List[str]:
    """Declared keys that `key` is probably a misspelling of, best first."""
    parent, _, name = key.rpartition(".")
    node = _find_node(cfg, parent)
    if isinstance(node, CfgNode):
        prefix = parent + "." if parent else ""
        return [prefix + match for match in difflib.get_close_matches(name, list(node), n=2)]
    return difflib.get_close_matches(key, _all_keys(cfg), n=2, cutoff=0.8)


def _unknown_key_message(unknown: Sequence[str], cfg: CfgNode, source: str) -> str:
    lines = [f"{source}: these config keys do not exist:"]
    for key in unknown:
        guesses = _close_keys(key, cfg)
        hint = f" (did you mean {' or '.join(guesses)}?)" if guesses else ""
        lines.append(f"  {key}{hint}")
    lines.append(
        "Fix the spelling, or declare the key with add_maskformer2_config / your own add_*_config."
    )
    return "\n".join(lines)


def load_config(path: str, opts: Optional[Sequence[str]] = None) -> CfgNode:
    """Build a Mask2Former config from detectron2's defaults, a YAML file and overrides.

    Args:
        path: YAML config file (may chain others with ``_BASE_``).
        opts: command-line style overrides ``["KEY", "VALUE", ...]`` applied after the file.

    Returns:
        The merged config, not frozen.

    Raises:
        FileNotFoundError: `path` does not exist.
        UnknownConfigKeyError: the file or `opts` name undeclared keys; the message lists them
            with the closest declared keys.
        ValueError: `opts` has an odd length, or DATASETS.METADATA_FILE is not a class table.
    """
    if not PathManager.isfile(path):
        raise FileNotFoundError(f"Config file '{path}' does not exist.")
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    try:
        cfg.merge_from_file(path)
    except KeyError as error:
        loaded = CfgNode.load_yaml_with_base(path, allow_unsafe=True)
        unknown = _unknown_keys(loaded, cfg)
        if not unknown:
            raise
        message = _unknown_key_message(unknown, cfg, f"Config file '{path}' (or a _BASE_ of it)")
        raise UnknownConfigKeyError(message) from error
    merge_overrides(cfg, opts)
    if cfg.DATASETS.METADATA_FILE:
        _register_metadata_file(cfg, path)
    return cfg


def _register_metadata_file(cfg: CfgNode, config_path: str) -> None:
    """Register DATASETS.METADATA_FILE (made absolute, relative to the config file)."""
    metadata_file = os.path.join(os.path.dirname(config_path), cfg.DATASETS.METADATA_FILE)
    # absolute, so that a dump of the config (e.g. OUTPUT_DIR/config.yaml) still finds it
    cfg.DATASETS["METADATA_FILE"] = os.path.abspath(metadata_file)
    register_metadata_file(cfg.DATASETS.METADATA_FILE)


def merge_overrides(cfg: CfgNode, opts: Optional[Sequence[str]]) -> None:
    """Apply command-line style overrides ``["KEY", "VALUE", ...]`` to a config in place.

    Raises:
        UnknownConfigKeyError: `opts` name undeclared keys (listed with the closest ones).
        ValueError: `opts` has an odd length.
    """
    if not opts:
        return
    opts = list(opts)
    if len(opts) % 2:
        raise ValueError(f"Config overrides must be KEY VALUE pairs; got an odd list: {opts}")
    unknown = [key for key in opts[0::2] if not _has_key(cfg, key)]
    if unknown:
        raise UnknownConfigKeyError(_unknown_key_message(unknown, cfg, "Config overrides (opts)"))
    cfg.merge_from_list(opts)


def add_opts_argument(parser: argparse.ArgumentParser) -> None:
    """The command-line tools' ``--opts KEY VALUE ...`` (config overrides, the rest of the
    line), for :func:`load_config` or :func:`merge_overrides`. (``train_net.py`` takes them
    as Detectron2's positional ``opts``.)"""
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        metavar="KEY VALUE",
        help="config overrides, e.g. MODEL.WEIGHTS model_final.pth (takes the rest of the line)",
    )
