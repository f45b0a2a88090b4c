"""Data layer: WebDataset shards read by random access, fed by the orchestrator's plan.

shards (URL patterns, counts), tarindex (sample index, random reads), keyed
(per-sample randomness), captions (source choice), transforms (crop/flip,
joint label-map geometry), loader (PlanLoader, iterate_split).
"""

from .captions import all_captions, caption_sources, choose_caption, choose_caption_pair
from .keyed import keyed_rng, keyed_uniform
from .loader import (
    Batch,
    EvalBatch,
    LoaderConfig,
    PlanLoader,
    ShardSet,
    StepSlice,
    iterate_split,
    resolve_num_classes,
    split_range,
)
from .shards import expand_urls, local_path, read_classes, read_sizes
from .tarindex import TarIndex, split_member_name
from .transforms import (
    CLIP_MEAN,
    CLIP_STD,
    AugmentParams,
    Geometry,
    apply_geometry,
    center_geometry,
    image_transform,
    joint_transform,
    sample_geometry,
    to_normalized_tensor,
)

__all__ = [
    "AugmentParams",
    "Batch",
    "CLIP_MEAN",
    "CLIP_STD",
    "EvalBatch",
    "Geometry",
    "LoaderConfig",
    "PlanLoader",
    "ShardSet",
    "StepSlice",
    "TarIndex",
    "all_captions",
    "apply_geometry",
    "caption_sources",
    "center_geometry",
    "choose_caption",
    "choose_caption_pair",
    "expand_urls",
    "image_transform",
    "iterate_split",
    "joint_transform",
    "keyed_rng",
    "keyed_uniform",
    "local_path",
    "read_classes",
    "read_sizes",
    "resolve_num_classes",
    "sample_geometry",
    "split_member_name",
    "split_range",
    "to_normalized_tensor",
]
