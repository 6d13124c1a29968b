"""Keep the config of an earlier run when a new run writes into the same OUTPUT_DIR.

Detectron2's ``default_setup`` writes the run's full config to ``OUTPUT_DIR/config.yaml``,
replacing what is there. A run started again in the same folder — ``--resume`` after changing
an option, or a new experiment pointed at an old folder by mistake — would lose the only record
of how the earlier checkpoints were trained. :func:`keep_earlier_config` runs first: when the
folder's ``config.yaml`` differs from the new config, it is renamed to
``config.<time of its last change>.yaml`` and a warning lists the keys that differ.
"""

import logging
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import yaml
from detectron2.config import CfgNode

__all__ = ["config_differences", "keep_earlier_config"]

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
MAX_LISTED = 20


def _flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: Dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_differences(earlier: Dict, current: Dict) -> List[Tuple[str, Any, Any]]:
    """(key, earlier value, current value) for every leaf key that differs, sorted by key; a
    key missing on one side has the value None there."""
    before, after = _flatten(earlier), _flatten(current)
    keys = sorted(set(before) | set(after))
    return [(k, before.get(k), after.get(k)) for k in keys if before.get(k) != after.get(k)]


def keep_earlier_config(output_dir: str, cfg: CfgNode, *, resume: bool) -> Optional[str]:
    """Rename ``output_dir/config.yaml`` out of the way when it differs from ``cfg``.

    Call it before Detectron2's ``default_setup`` writes the new one, in the main process.

    Args:
        output_dir: the run's OUTPUT_DIR.
        cfg: the new run's config.
        resume: whether the run continues from the folder's last checkpoint (said in the
            warning: the checkpoint was trained with the earlier config).

    Returns:
        the path the earlier config was moved to, or None (no earlier config, or the same).
    """
    path = os.path.join(output_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    current = yaml.safe_load(cfg.dump())
    try:
        with open(path) as f:
            earlier = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as error:
        earlier, unreadable = None, error
    else:
        unreadable = None
    if unreadable is None and isinstance(earlier, dict):
        differences = config_differences(earlier, current)
        if not differences:
            return None
    else:
        differences = []
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(os.path.getmtime(path)))
    kept = os.path.join(output_dir, f"config.{stamp}.yaml")
    suffix = 1
    while os.path.exists(kept):
        suffix += 1
        kept = os.path.join(output_dir, f"config.{stamp}-{suffix}.yaml")
    os.replace(path, kept)
    if not differences:
        logger.warning(
            "%s could not be read as a config (%s); it is kept as %s.",
            path,
            unreadable or "not a mapping",
            kept,
        )
        return kept
    listed = "; ".join(
        f"{key}: {before!r} -> {after!r}" for key, before, after in differences[:MAX_LISTED]
    )
    more = f"; and {len(differences) - MAX_LISTED} more" if len(differences) > MAX_LISTED else ""
    checkpoints = (
        " --resume continues from checkpoints trained with the earlier config." if resume else ""
    )
    logger.warning(
        "%s is the config of an earlier run in this folder and differs from this run's in %d "
        "key(s): %s%s. It is kept as %s; config.yaml is now this run's.%s",
        path,
        len(differences),
        listed,
        more,
        kept,
        checkpoints,
    )
    return kept
