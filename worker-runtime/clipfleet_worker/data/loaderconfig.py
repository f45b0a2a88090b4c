"""What the loader compiles from a stage config, and the names its samples and skips go by."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .members import BAD_GZIP, GZIP_TOO_LARGE
from .shards import read_classes
from .transforms import AugmentParams

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
SEG_EXT = "seg.png"
DEPTH_EXT = "depth.png"
TASKS = ("pretrain", "finetune-seg", "finetune-depth", "eval", "train-captioner")
EMPTY_CAPTIONS = ("skip", "keep")
# Every reason a sample is skipped for: step and eval reports carry counts by these names,
# and the orchestrator keeps them as a bounded label set.
SKIP_REASONS = (
    "no image",
    "undecodable image",
    "no caption",
    BAD_GZIP,
    GZIP_TOO_LARGE,
    f"no {SEG_EXT}",
    f"undecodable {SEG_EXT}",
    f"no {DEPTH_EXT}",
    f"undecodable {DEPTH_EXT}",
)

Tokenize = Callable[[list[str]], torch.Tensor]


@dataclass(frozen=True)
class StepSlice:
    """One rank's samples for one step, as the orchestrator's StepPlan gives them."""

    step: int
    epoch: int
    sample_in_epoch: int
    shards: list[int]
    indices: list[int]
    sample_ids: list[int]



@dataclass(frozen=True)
class LoaderConfig:
    """What decoding needs from a stage config, compiled once."""

    task: str
    seed: int
    image_size: int
    captions: dict[str, float]
    caption_mode: str
    augment: AugmentParams | None  # None: val transform
    num_classes: int | None
    ignore_index: int
    empty_captions: str = "skip"  # "keep": an empty caption is the caption ""

    @property
    def wants_captions(self) -> bool:
        """Contrastive tasks and the captioner read captions; dense fine-tunes do not."""
        return self.task in ("pretrain", "eval", "train-captioner")

    @property
    def dense(self) -> str | None:
        """Which label map the task reads: "seg", "depth" or None."""
        return {"finetune-seg": "seg", "finetune-depth": "depth"}.get(self.task)

    @staticmethod
    def from_cfg(cfg: dict, task: str, image_size: int, split: str, shard_urls: Sequence[str]) -> "LoaderConfig":
        """Compile from the StageSpec JSON; train split augments, val does not."""
        if task not in TASKS:
            raise ConfigError(f"expected one of {', '.join(TASKS)}, got {task!r}", field="task")
        data = cfg["data"]
        dense = cfg.get("dense") or {}
        num_classes = resolve_num_classes(cfg, shard_urls) if task == "finetune-seg" else None
        return LoaderConfig(
            task=task,
            seed=int(cfg["seed"]),
            image_size=int(image_size),
            captions={str(k): float(v) for k, v in data["captions"].items()},
            caption_mode=str(data.get("caption_mode", "sample")),
            augment=AugmentParams.from_cfg(data["augment"]) if split == "train" else None,
            num_classes=num_classes,
            ignore_index=int(dense.get("ignore_index", 255)),
            empty_captions=_empty_captions(data),
        )


def _empty_captions(data: dict) -> str:
    mode = str(data.get("empty_captions") or "skip")
    if mode not in EMPTY_CAPTIONS:
        raise ConfigError(f"expected one of {', '.join(EMPTY_CAPTIONS)}, got {mode!r}", field="data.empty_captions")
    return mode


def resolve_num_classes(cfg: dict, shard_urls: Sequence[str]) -> int:
    """dense.num_classes, or the length of `seg_classes` in the dataset's classes.json."""
    n = (cfg.get("dense") or {}).get("num_classes")
    if n is not None:
        return int(n)
    for url in shard_urls[:1]:
        classes = read_classes(url)
        if classes is not None and isinstance(classes.get("seg_classes"), list):
            return len(classes["seg_classes"])
    raise ConfigError(
        "not set and no classes.json with seg_classes next to the shards "
        f"({shard_urls[0] if shard_urls else 'no shards'})",
        field="dense.num_classes",
    )


def seg_class_names(shard_url: str, num_classes: int) -> list[str]:
    """Names of the seg classes from the dataset's classes.json (metric-key safe), else their indices."""
    classes = read_classes(shard_url) or {}
    names = classes.get("seg_classes")
    if not isinstance(names, list) or len(names) != num_classes:
        return [str(i) for i in range(num_classes)]
    return [re.sub(r"[^A-Za-z0-9_-]+", "_", str(n)) or str(i) for i, n in enumerate(names)]
