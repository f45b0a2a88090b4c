"""Text tower: open_clip's TextTransformer (causal CLIP text encoder, or MobileCLIP's bidirectional variant).

Pooling takes the final-LN output at the end-of-text token, found as the
argmax of the ids (EOT is the largest id in every tokenizer here). Padding is
not masked, as in open_clip and MobileCLIP: with causal attention it cannot
reach EOT anyway, and a bidirectional model was trained attending to it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import TextConfig
from .transformer import LayerNorm, Transformer


class TextTransformer(nn.Module):
    """Token + position embedding, pre-norm blocks, ln_final, EOT pooling, projection to embed_dim."""

    def __init__(self, cfg: TextConfig, vocab_size: int, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.context_length = cfg.context_length
        self.token_embedding = nn.Embedding(vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.depth, cfg.heads, cfg.mlp_ratio)
        self.ln_final = LayerNorm(cfg.width)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, embed_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.transformer.init_clip_()
        nn.init.normal_(self.text_projection, std=cfg.width**-0.5)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward: less memory, about a third more compute."""
        self.transformer.grad_checkpointing = enable

    def forward(self, tokens: Tensor) -> Tensor:
        """Token ids [B, L] (L <= context_length) -> un-normalised embeddings [B, embed_dim]."""
        seq = tokens.shape[1]
        assert seq <= self.context_length, f"{seq} tokens exceed the text tower's context_length {self.context_length}"
        x = self.token_embedding(tokens) + self.positional_embedding[:seq]
        x, _ = self.transformer(x, causal=self.cfg.causal)
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return pooled @ self.text_projection
