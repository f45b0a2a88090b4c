"""The built-in captioner plugin: a train-captioner stage's model, greedy decoding.

`make(args, ctx)` is the factory behind the spec's `captioner: {checkpoint:
<train-captioner stage or path>}` (entry point
`clipfleet_worker.captioning.builtin:make`; the interface is in plugins.py).
args: `checkpoint`, the stage's `model.pt` (or the checkpoint directory
holding it); `max_tokens`, the longest caption in tokens (EOT included;
default: the decoder's context_length - 1, which also caps it, with a warning); `batch_size`, images
decoded at once (default 32). Other keys are ignored.

The model.pt carries its own config (models/captioner.py), so nothing else
is needed. Output is deterministic and independent of batching: decoding is
greedy (the lowest id wins a tie), and every batch is padded to
`batch_size` rows so the model always computes on the same shapes.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import torch

from .. import checkpoint as ckpt
from ..data.transforms import image_transform
from ..errors import CheckpointError, ConfigError
from ..models.captioner import ImageCaptioner, build_captioner, captioner_config_of
from ..tokenizers import build_tokenizer

DEFAULT_BATCH_SIZE = 32
# A batch bigger than this is a typo (and would allocate accordingly).
MAX_BATCH_SIZE = 4096
# Beyond any decoder's context (the spec caps decoder.context_length at 1024).
MAX_TOKENS = 1024


def _positive_int(args: Mapping[str, Any], key: str, default: int | None, most: int) -> int | None:
    v = args.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= most:
        raise ConfigError(f"expected an integer from 1 to {most}, got {v!r}", f"captioner.{key}")
    return v


class BuiltinCaptioner:
    """A loaded ImageCaptioner on one device: images in, one caption each out (AltTexts are not used)."""

    def __init__(self, model: ImageCaptioner, tokenizer: Any, max_tokens: int, batch_size: int, device: torch.device) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.device = device
        self.image_size = int(model.image_cfg["image_size"])

    @torch.no_grad()
    def caption(self, images: Sequence[Any], alttexts: Sequence[str]) -> list[str]:
        """One greedy caption per image, in order; `alttexts` only has to match `images` in length."""
        if len(images) != len(alttexts):
            raise ValueError(f"{len(images)} images but {len(alttexts)} alt texts")
        out: list[str] = []
        for lo in range(0, len(images), self.batch_size):
            part = [image_transform(img, self.image_size, None, 0, 0, "") for img in images[lo : lo + self.batch_size]]
            batch = torch.zeros((self.batch_size, 3, self.image_size, self.image_size))
            batch[: len(part)] = torch.stack(part)
            ids = self.model.generate(batch.to(self.device), self.max_tokens)[: len(part)].tolist()
            out.extend(self.tokenizer.decode(row).strip() for row in ids)
        return out


def load_model(path: str, device: torch.device) -> tuple[ImageCaptioner, Any]:
    """The captioner in `path` (a model.pt, or a checkpoint directory with one) and its tokenizer, in eval mode on `device`."""
    if os.path.isdir(path):
        path = os.path.join(path, ckpt.MODEL_FILE)
    if not os.path.isfile(path):
        raise ConfigError(f"no such file: {path}", "captioner.checkpoint")
    state = ckpt.load(path)
    if not isinstance(state, dict):
        raise CheckpointError("does not hold a state dict", path)
    cfg = captioner_config_of(state, path)
    tokenizer = build_tokenizer(cfg["model"]["tokenizer"])
    model = build_captioner(cfg, tokenizer)
    model.load_state_dict(state)
    return model.to(device).eval(), tokenizer


def make(args: Mapping[str, Any], ctx: Any) -> BuiltinCaptioner:
    """Factory of the built-in captioner (`ctx`: a plugins.CaptionerContext; its device is used)."""
    path = args.get("checkpoint")
    if not isinstance(path, str) or not path:
        raise ConfigError(f"expected the path of a train-captioner model.pt, got {path!r}", "captioner.checkpoint")
    model, tokenizer = load_model(path, ctx.device)
    most = model.cfg.context_length - 1
    max_tokens = _positive_int(args, "max_tokens", most, MAX_TOKENS)
    if max_tokens is not None and max_tokens > most:
        print(f"clipfleet worker: warning: captioner.max_tokens {max_tokens} is more than the model's decoder allows "
              f"(context_length {most + 1}): captions stop at {most} tokens", flush=True)
        max_tokens = most
    batch_size = _positive_int(args, "batch_size", DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE)
    assert max_tokens is not None and batch_size is not None
    return BuiltinCaptioner(model, tokenizer, max_tokens, batch_size, ctx.device)
