"""The built-in captioner: an image tower as encoder and a small causal transformer decoder.

A prefix decoder (as in SimVLM / ClipCap, the simplest of the "image tokens
in, text out" designs): the image tower's output tokens (a ViT's every token,
an MCi's last feature map) are projected to the decoder width and put before
the caption's tokens; the decoder attends bidirectionally within that prefix
and causally over the caption, so the caption token at position i sees the
whole image and the caption tokens before it. The blocks and the attention
kernel are the towers' own (transformer.py, attention.py), so torch 1.13
runs the spelled-out attention and torch 2.x SDPA, with the same weights.

The model's state dict carries its own config as `_extra_state`
(`get_extra_state`), so a `model.pt` alone rebuilds it
(`captioner_from_state`): the built-in captioner plugin gets only a path.
The image tower is named `visual` like CLIP's, so `load_image_tower` starts
it from a CLIP checkpoint (`init: {checkpoint: ...}`).

Greedy decoding is incremental (keys and values cached per layer); its
shapes depend on the step and the batch size only, with rows that never
interact, so an image's caption does not depend on which other images share
its batch or in which order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .attention import KVCache
from .clip import build_image_tower
from .config import image_family
from .transformer import LayerNorm, Transformer

# Version of the `_extra_state` layout; a model.pt of another format is refused.
STATE_FORMAT = 1


@dataclass(frozen=True)
class DecoderConfig:
    """The decoder's shape (the spec's `decoder` section): tokens up to context_length, SOT and EOT included."""

    width: int
    depth: int
    heads: int
    mlp_ratio: float
    context_length: int

    @staticmethod
    def from_spec(d: Mapping[str, Any], field: str = "decoder") -> "DecoderConfig":
        vals: dict[str, Any] = {}
        for key in ("width", "depth", "heads", "context_length"):
            v = d.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"expected a positive integer, got {v!r}", f"{field}.{key}")
            vals[key] = v
        r = d.get("mlp_ratio")
        if isinstance(r, bool) or not isinstance(r, (int, float)) or r <= 0:
            raise ConfigError(f"expected a positive number, got {r!r}", f"{field}.mlp_ratio")
        if vals["width"] % vals["heads"]:
            raise ConfigError(f"width {vals['width']} is not divisible by heads {vals['heads']}", f"{field}.heads")
        if vals["context_length"] < 2:
            raise ConfigError(f"expected at least 2 (SOT and EOT), got {vals['context_length']}", f"{field}.context_length")
        return DecoderConfig(mlp_ratio=float(r), **vals)


def _prefix_tokens(image_cfg: Mapping[str, Any]) -> tuple[int, int]:
    """(number of image tokens, their width) of a dense image tower built from image_cfg."""
    size = int(image_cfg["image_size"])
    if image_family(image_cfg) == "vit":
        grid = size // int(image_cfg["patch"])
        return grid * grid + 1, int(image_cfg["width"])
    side = size // 32
    return side * side, int(image_cfg["widths"][-1])


class ImageCaptioner(nn.Module):
    """Image tower (`visual`, no pooling head) -> projected prefix -> causal decoder -> next-token logits."""

    def __init__(self, image_cfg: Mapping[str, Any], tokenizer_cfg: Mapping[str, Any], decoder: DecoderConfig, vocab_size: int,
                 sot_id: int, eot_id: int, pad_id: int) -> None:
        super().__init__()
        self.image_cfg = dict(image_cfg)
        self.tokenizer_cfg = dict(tokenizer_cfg)
        self.cfg = decoder
        self.vocab_size = vocab_size
        self.sot_id, self.eot_id, self.pad_id = sot_id, eot_id, pad_id
        self.visual = build_image_tower(image_cfg, None)
        self.num_prefix, enc_width = _prefix_tokens(image_cfg)
        w = decoder.width
        self.prefix_norm = LayerNorm(enc_width)
        self.prefix_proj = nn.Linear(enc_width, w)
        self.token_embedding = nn.Embedding(vocab_size, w)
        self.positional_embedding = nn.Parameter(torch.empty(self.num_prefix + decoder.context_length, w))
        self.transformer = Transformer(w, decoder.depth, decoder.heads, decoder.mlp_ratio)
        self.ln_final = LayerNorm(w)
        self.lm_head = nn.Linear(w, vocab_size, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.transformer.init_clip_()
        nn.init.normal_(self.lm_head.weight, std=w**-0.5)

    # The config travels inside the state dict (key `_extra_state`), so a model.pt rebuilds its model.
    def get_extra_state(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "image": self.image_cfg,
            "tokenizer": self.tokenizer_cfg,
            "decoder": asdict(self.cfg),
            "vocab_size": self.vocab_size,
        }

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ConfigError(f"not a captioner state of format {STATE_FORMAT}", "checkpoint")
        if state.get("decoder") != asdict(self.cfg) or state.get("vocab_size") != self.vocab_size:
            raise ConfigError(f"the checkpoint's decoder {state.get('decoder')} differs from this model's {asdict(self.cfg)}", "decoder")

    def encode_image(self, images: Tensor) -> Tensor:
        """Images [B, 3, H, W] -> prefix tokens [B, P, width] (with their positions)."""
        v = self.visual
        if hasattr(v, "transformer"):  # ViT: every token after the blocks
            tokens, _ = v._embed(images)
            tokens, _ = v.transformer(tokens)
        else:  # MCi: the last (stride-32) feature map as tokens
            fm = v.forward_features(images)[-1]
            tokens = fm.flatten(2).transpose(1, 2)
        x = self.prefix_proj(self.prefix_norm(tokens))
        return x + self.positional_embedding[: self.num_prefix].to(x.dtype)

    def attention_mask(self, n_text: int, device: torch.device) -> Tensor:
        """Boolean [P+T, P+T], True = may attend: the prefix sees itself, a caption token the prefix and the tokens up to it."""
        p = self.num_prefix
        n = p + n_text
        keep = torch.ones(n, n, dtype=torch.bool, device=device).tril()
        keep[:, :p] = True
        return keep

    def decode(self, prefix: Tensor, tokens: Tensor) -> Tensor:
        """Prefix [B, P, w] and caption ids [B, T] (T < context_length + 1) -> logits [B, T, vocab]."""
        t = tokens.shape[1]
        assert t <= self.cfg.context_length, f"{t} tokens exceed the decoder's context_length {self.cfg.context_length}"
        p = self.num_prefix
        x = self.token_embedding(tokens) + self.positional_embedding[p : p + t].to(prefix.dtype)
        x = torch.cat([prefix, x.to(prefix.dtype)], dim=1)
        x, _ = self.transformer(x, attn_mask=self.attention_mask(t, x.device))
        return self.lm_head(self.ln_final(x[:, p:]))

    def forward(self, images: Tensor, tokens: Tensor) -> Tensor:
        """Teacher forcing: logits [B, T-1, vocab] predicting tokens[:, 1:] from tokens[:, :-1]."""
        return self.decode(self.encode_image(images), tokens[:, :-1])

    @torch.no_grad()
    def generate(self, images: Tensor, max_tokens: int) -> Tensor:
        """Greedy decoding: ids [B, context_length] (SOT, up to max_tokens generated ids ending with EOT, then pad).

        Incremental, with each layer's keys and values cached: the prefix runs
        once (it attends only to itself, so its keys and values never depend
        on the caption), then each step runs one new token through the blocks
        against the cache, the same attention the causal mask of `decode`
        gives, for about 1/context_length of a full pass's work per step. The
        shapes of step i depend on i and the batch size only, and rows never
        interact, so an image's caption does not depend on which other images
        share its batch or in which order (the plugin pads every batch to one
        size)."""
        ctx = self.cfg.context_length
        steps = max(1, min(int(max_tokens), ctx - 1))
        b = images.shape[0]
        p = self.num_prefix
        blocks = self.transformer.resblocks
        caches = [KVCache(p + steps) for _ in blocks]
        x = self.encode_image(images)
        dtype = x.dtype
        for block, cache in zip(blocks, caches):
            x = block.forward_cached(x, cache)
        seq = torch.full((b, ctx), self.pad_id, dtype=torch.long, device=images.device)
        seq[:, 0] = self.sot_id
        done = torch.zeros(b, dtype=torch.bool, device=images.device)
        banned = torch.tensor([self.pad_id, self.sot_id], device=images.device)
        for i in range(steps):
            x = (self.token_embedding(seq[:, i : i + 1]) + self.positional_embedding[p + i : p + i + 1].to(dtype)).to(dtype)
            for block, cache in zip(blocks, caches):
                x = block.forward_cached(x, cache)
            logits = self.lm_head(self.ln_final(x[:, -1])).float()
            logits[:, banned] = float("-inf")
            nxt = logits.argmax(dim=-1)
            if i == steps - 1:
                nxt = torch.full_like(nxt, self.eot_id)  # the length budget is spent: end the caption
            nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
            seq[:, i + 1] = nxt
            done = done | (nxt == self.eot_id)
            if bool(done.all()):
                break
        return seq


def caption_loss_sums(model: ImageCaptioner, images: Tensor, tokens: Tensor, forward=None) -> tuple[Tensor, Tensor]:
    """(sum of next-token cross-entropies over the caption's real tokens, their count); pad targets are ignored.

    `forward`: the model's forward, compiled or not (train.compile)."""
    logits = (forward or model)(images, tokens)
    target = tokens[:, 1:]
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=model.pad_id, reduction="sum")
    return loss, (target != model.pad_id).sum()


def build_captioner(cfg: Mapping[str, Any], tokenizer: Any) -> ImageCaptioner:
    """A captioner from a stage config (model.image, model.tokenizer, decoder) and its tokenizer."""
    if not isinstance(cfg.get("decoder"), Mapping):
        raise ConfigError("required section is missing", "decoder")
    model = cfg.get("model") or {}
    if not isinstance(model.get("image"), Mapping):
        raise ConfigError("required section is missing", "model.image")
    return ImageCaptioner(model["image"], model.get("tokenizer") or {"type": "byte", "vocab": None}, DecoderConfig.from_spec(cfg["decoder"]),
                          tokenizer.vocab_size, tokenizer.sot_id, tokenizer.eot_id, tokenizer.pad_id)


def captioner_config_of(state: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The stage-config-like dict ({model: {image, tokenizer}, decoder}) kept in a captioner state dict."""
    extra = state.get("_extra_state")
    if not isinstance(extra, dict) or extra.get("format") != STATE_FORMAT:
        raise ConfigError(f"{path}: not a train-captioner model (no captioner config of format {STATE_FORMAT} in it)", "checkpoint")
    return {"model": {"image": extra["image"], "tokenizer": extra["tokenizer"]}, "decoder": extra["decoder"]}
