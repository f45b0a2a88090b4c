"""Models: ViT and MCi image towers, the text tower, CLIP, and dense fine-tuning heads.

Builders take the spec's JSON dicts (ModelSpec, DenseSpec in
orchestrator/src/domain/spec.ts); presets.json is shared with the orchestrator.
"""

from .attention import MultiheadSelfAttention, attention_reference, scaled_dot_product_attention
from .clip import CLIP, build_clip, build_image_tower, build_text_tower, count_params, params_sha256, unwrap_model
from .dense_heads import DenseModel, TowerLoadReport, build_dense_model, load_image_tower, set_backbone_frozen
from .mci import MCi, reparameterize_mci
from .presets import resolve_image_preset, resolve_model_cfg, resolve_text_preset
from .text import TextTransformer
from .vit import VisionTransformer

__all__ = [
    "CLIP",
    "DenseModel",
    "MCi",
    "MultiheadSelfAttention",
    "TextTransformer",
    "TowerLoadReport",
    "VisionTransformer",
    "attention_reference",
    "build_clip",
    "build_dense_model",
    "build_image_tower",
    "build_text_tower",
    "count_params",
    "load_image_tower",
    "params_sha256",
    "reparameterize_mci",
    "resolve_image_preset",
    "resolve_model_cfg",
    "resolve_text_preset",
    "scaled_dot_product_attention",
    "set_backbone_frozen",
    "unwrap_model",
]
