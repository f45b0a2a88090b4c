"""open_clip interop: a clipfleet CLIP as an open_clip model directory, and open_clip weights as `init`.

An export is the directory open_clip's `create_model("local-dir:DIR")`
reads (open_clip v3.3.0 factory.py): `open_clip_config.json` holding
`model_cfg` (the model_configs/*.json format: embed_dim, quick_gelu,
vision_cfg, text_cfg) and `preprocess_cfg` (mean, std, interpolation,
resize mode), and `open_clip_pytorch_model.bin`, a plain state_dict in the
key layout of open_clip's `CLIP` class: `visual.*`, the text tower at the top
level (`token_embedding.weight`, `positional_embedding`, `transformer.*`,
`ln_final.*`, `text_projection`) and `logit_scale`. clipfleet's own layout
is open_clip's `CustomTextCLIP` one (the text tower under `text.`); both are
read here, as open_clip reads both.

Only ViT image towers with a CLIP BPE tokenizer have an open_clip
equivalent; `export_problem` says why anything else has none.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import io
import os
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from .data.transforms import CLIP_MEAN, CLIP_STD
from .errors import CheckpointError, ConfigError
from .models.config import image_family
from .models.transformer import resample_pos_embed
from .tokenizers import MAX_MERGES

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_pytorch_model.bin"
VOCAB_NAME = "bpe_vocab.txt.gz"
# The weight files open_clip's local-dir loader looks for (and a plain torch.save file a user points at).
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth")
# sha256 of OpenAI CLIP's bpe_simple_vocab_16e6.txt.gz as open_clip ships it: open_clip's default tokenizer.
STANDARD_BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
STANDARD_VOCAB_SIZE = 49408
# Top-level keys of open_clip's CLIP class that belong to its text tower (clipfleet keeps them under `text.`).
_TEXT_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


def export_problem(model_cfg: Mapping[str, Any]) -> str | None:
    """Why a model of this ModelSpec has no open_clip equivalent, or None when it has one."""
    if image_family(model_cfg["image"]) != "vit":
        return ("model.image: an MCi (MobileCLIP-style) tower has no open_clip equivalent: open_clip builds its MobileCLIP "
                "towers from timm's fastvit_mci models, whose modules and re-parameterised blocks differ from clipfleet's")
    tok = model_cfg.get("tokenizer") or {}
    if tok.get("type") != "bpe":
        return ("model.tokenizer: the byte tokenizer has no open_clip equivalent (open_clip's tokenizer would give other ids); "
                "train with model.tokenizer: {type: bpe, vocab: bpe_simple_vocab_16e6.txt.gz} to export to open_clip")
    return None


def model_cfg(cfg: Mapping[str, Any], vocab_size: int) -> dict[str, Any]:
    """open_clip's model_cfg (the model_configs/*.json format) for a ViT CLIP of this ModelSpec."""
    image, text = cfg["image"], cfg["text"]
    text_cfg: dict[str, Any] = {
        "context_length": int(text["context_length"]),
        "vocab_size": int(vocab_size),
        "width": int(text["width"]),
        "heads": int(text["heads"]),
        "layers": int(text["depth"]),
        "mlp_ratio": float(text["mlp_ratio"]),
    }
    if not text["causal"]:
        text_cfg["no_causal_mask"] = True
    return {
        "embed_dim": int(cfg["embed_dim"]),
        # clipfleet's blocks use nn.GELU (open_clip's default since its own models); OpenAI's weights need QuickGELU.
        "quick_gelu": False,
        "vision_cfg": {
            "image_size": int(image["image_size"]),
            "layers": int(image["depth"]),
            "width": int(image["width"]),
            "patch_size": int(image["patch"]),
            # open_clip derives the heads as width // head_width.
            "head_width": int(image["width"]) // int(image["heads"]),
            "mlp_ratio": float(image["mlp_ratio"]),
        },
        "text_cfg": text_cfg,
    }


def preprocess_cfg(image_size: int) -> dict[str, Any]:
    """open_clip's preprocess_cfg for clipfleet's evaluation transform: shortest-side bicubic resize, centre crop, CLIP mean/std."""
    return {"size": image_size, "mode": "RGB", "mean": list(CLIP_MEAN), "std": list(CLIP_STD),
            "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}


def to_openclip_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A clipfleet CLIP state dict in open_clip's CLIP layout (the text tower moved from `text.` to the top level)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("text."):
            out[key[len("text."):]] = value
        elif key.startswith("visual.") or key == "logit_scale":
            out[key] = value
        else:
            raise ConfigError(f"{key}: not part of a clipfleet CLIP (a fine-tuned dense model cannot be exported)", "export")
    return out


def from_openclip_state(obj: Any, path: str) -> dict[str, Tensor]:
    """A state dict in clipfleet's layout from what an open_clip weights file holds.

    Takes a state_dict or {"state_dict": ...} (open_clip's training checkpoints), strips
    `module.` prefixes (DDP), and moves a top-level text tower (CLIP layout) under `text.`.
    A value that is not a tensor is refused naming its key.
    """
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"holds {type(obj).__name__}, not a state_dict (a mapping of names to tensors)", path)
    state: dict[str, Tensor] = {}
    for key, value in obj.items():
        name = str(key)
        if name.startswith("module."):
            name = name[len("module."):]
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{name}: not a tensor ({type(value).__name__})", path)
        state[name] = value
    if "positional_embedding" in state:
        state = {("text." + k if k.startswith(_TEXT_PREFIXES) else k): v for k, v in state.items()}
    # A causal mask saved as a buffer by old exports is rebuilt by the model, never loaded.
    for buffer in ("attn_mask", "text.attn_mask"):
        state.pop(buffer, None)
    return state


def state_problems(state: Mapping[str, Tensor], reference: Mapping[str, Tensor],
                   shown: Callable[[str], str] = lambda key: key) -> list[str]:
    """Every key of `state` that does not fit `reference` (a freshly built model's state dict), one line each.

    `shown` names a key as the file spells it (open_clip's CLIP layout has the text tower at the top level).
    """
    problems = []
    for key in sorted(set(reference) - set(state)):
        problems.append(f"{shown(key)}: missing (the spec's towers need {tuple(reference[key].shape)})")
    for key in sorted(set(state) - set(reference)):
        why = " (a SigLIP-style bias; clipfleet's contrastive loss has none)" if key == "logit_bias" else ""
        problems.append(f"{shown(key)}: unexpected key{why}")
    for key in sorted(set(state) & set(reference)):
        if tuple(state[key].shape) != tuple(reference[key].shape):
            problems.append(f"{shown(key)}: shape {tuple(state[key].shape)}, the spec's towers need {tuple(reference[key].shape)}")
    return problems


def fit_state(state: dict[str, Tensor], reference: Mapping[str, Tensor], path: str,
              shown: Callable[[str], str] = lambda key: key) -> dict[str, Tensor]:
    """`state` ready for load_state_dict(strict=True) into the model `reference` came from.

    A ViT positional embedding of another grid (same width) is bicubic-resampled, as open_clip
    does at load; any other mismatch is a CheckpointError naming the file, the first key (as
    `shown` spells it) and how many more there are.
    """
    pos = "visual.positional_embedding"
    if pos in state and pos in reference and state[pos].shape != reference[pos].shape \
            and state[pos].ndim == 2 and state[pos].shape[-1] == reference[pos].shape[-1]:
        side = int(round((reference[pos].shape[0] - 1) ** 0.5))
        state = {**state, pos: resample_pos_embed(state[pos], (side, side))}
    problems = state_problems(state, reference, shown)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"{problems[0]}{more}", path)
    return state


def load_weights_file(path: str) -> Any:
    """What an open_clip weights file holds (see load_weights_bytes)."""
    with open(path, "rb") as f:
        return load_weights_bytes(f.read(), path)


def load_weights_bytes(data: bytes, path: str) -> Any:
    """torch.load with weights_only (no pickled code) of a weights file's bytes, or safetensors by its suffix."""
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load as load_safetensors  # type: ignore[import-not-found]
        except ImportError:
            raise CheckpointError("is a safetensors file and the safetensors package is not installed here; "
                                  "convert it with torch.save, or install safetensors", path) from None
        return load_safetensors(data)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses pickled code with a long multi-line message: keep its first line
        text = str(err).strip()
        first = text.splitlines()[0] if text else type(err).__name__
        raise CheckpointError(f"not a PyTorch state_dict this worker may load (torch.load with weights_only: {first})", path) from None


def weights_file_of(ref: str) -> str:
    """The weights file an init.checkpoint REF names: the file itself, or an export directory's weights."""
    if os.path.isfile(ref):
        return ref
    found = sorted(f for f in os.listdir(ref) if f.endswith(WEIGHT_SUFFIXES + (".safetensors",)))
    if WEIGHTS_NAME in found:
        return os.path.join(ref, WEIGHTS_NAME)
    if len(found) != 1:
        raise CheckpointError(f"expected {WEIGHTS_NAME} (or one .bin/.pt/.pth/.safetensors file) beside {CONFIG_NAME}, "
                              f"found {found or 'none'}", ref)
    return os.path.join(ref, found[0])


def vocab_for_export(vocab_path: str, out_dir: str) -> dict[str, Any] | None:
    """The text_cfg tokenizer_kwargs an export needs: None for open_clip's own vocabulary, else a copy in the export.

    The copy drops empty lines: open_clip keeps an empty merge for a trailing newline of a
    short merges file, which would shift its special-token ids away from clipfleet's.
    """
    with open(vocab_path, "rb") as f:
        raw = f.read()
    if hashlib.sha256(raw).hexdigest() == STANDARD_BPE_SHA256:
        return None
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    kept = [lines[0]] + [line for line in lines[1: MAX_MERGES + 1] if line]
    dest = os.path.join(out_dir, VOCAB_NAME)
    with gzip.open(dest, "wb") as f:
        f.write("\n".join(kept).encode("utf-8"))
    return {"bpe_path": os.path.abspath(dest)}


def write_export(state: Mapping[str, Tensor], cfg: Mapping[str, Any], vocab_size: int, out_dir: str,
                 meta: Mapping[str, Any]) -> dict[str, Any]:
    """Writes an open_clip model directory for a clipfleet CLIP's state dict; returns what was written."""
    why = export_problem(cfg)
    if why is not None:
        raise ConfigError(why)
    os.makedirs(out_dir, exist_ok=True)
    oc_cfg = model_cfg(cfg, vocab_size)
    tokenizer_kwargs = vocab_for_export(str(cfg["tokenizer"]["vocab"]), out_dir)
    if tokenizer_kwargs is not None:
        oc_cfg["text_cfg"]["tokenizer_kwargs"] = tokenizer_kwargs
    weights = to_openclip_state(state)
    tmp = os.path.join(out_dir, WEIGHTS_NAME + ".tmp")
    torch.save({k: v.detach().cpu().contiguous() for k, v in weights.items()}, tmp)
    os.replace(tmp, os.path.join(out_dir, WEIGHTS_NAME))
    config = {"model_cfg": oc_cfg, "preprocess_cfg": preprocess_cfg(int(cfg["image"]["image_size"])), "clipfleet": dict(meta)}
    with open(os.path.join(out_dir, CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(_readme(config, tokenizer_kwargs is not None))
    return {"dir": os.path.abspath(out_dir), "files": sorted(os.listdir(out_dir)), "keys": len(weights), "config": config}


def _readme(config: Mapping[str, Any], own_vocab: bool) -> str:
    meta = config["clipfleet"]
    vocab = (f"The tokenizer is CLIP's BPE with this model's own merges file, copied here as {VOCAB_NAME}; "
             "text_cfg.tokenizer_kwargs.bpe_path names it by absolute path: edit it if you move this folder.\n"
             if own_vocab else "The tokenizer is open_clip's default (CLIP BPE, bpe_simple_vocab_16e6.txt.gz).\n")
    return (
        f"# open_clip export of clipfleet job {meta.get('job')}\n\n"
        f"Stage `{meta.get('stage')}`, step {meta.get('step')}; image tower {meta.get('image')}, "
        f"text tower {meta.get('text')}; checkpoint {meta.get('checkpoint')}.\n\n"
        "```python\nimport open_clip\n"
        "model, _, preprocess = open_clip.create_model_and_transforms('local-dir:' + EXPORT_DIR)\n"
        "tokenizer = open_clip.get_tokenizer('local-dir:' + EXPORT_DIR)\n```\n\n"
        f"{vocab}"
        f"{CONFIG_NAME}: model_cfg (open_clip's model_configs format), preprocess_cfg, and clipfleet's record of "
        f"where the weights came from. {WEIGHTS_NAME}: a state_dict in open_clip's CLIP key layout.\n"
    )


def load_init_state(ref: str, cfg: Mapping[str, Any], vocab_size: int) -> dict[str, Tensor]:
    """The clipfleet-layout state dict of an open_clip init.checkpoint REF, checked against a CLIP of `cfg`'s towers."""
    from .models import build_clip

    path = weights_file_of(ref)
    if os.path.isdir(ref):
        _check_config(os.path.join(ref, CONFIG_NAME), cfg)
    raw = load_weights_file(path)
    state = from_openclip_state(raw, path)
    return fit_state(state, build_clip(cfg, vocab_size).state_dict(), path, key_namer(raw))


def key_namer(obj: Any) -> Callable[[str], str]:
    """How the file holding `obj` spells a clipfleet key: open_clip's CLIP layout keeps the text tower at the top level."""
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    top = {str(k)[len("module."):] if str(k).startswith("module.") else str(k) for k in obj} if isinstance(obj, Mapping) else set()
    if "positional_embedding" not in top:
        return lambda key: key
    return lambda key: key[len("text."):] if key.startswith("text.") else key


def _check_config(path: str, cfg: Mapping[str, Any]) -> None:
    """What the weights' shapes cannot tell: an export whose blocks compute otherwise than the spec's towers."""
    try:
        with open(path) as f:
            oc = json.load(f)
        oc = oc.get("model_cfg", oc)
        quick_gelu = bool(oc.get("quick_gelu", False))
        no_causal_mask = bool(oc.get("text_cfg", {}).get("no_causal_mask", False))
    except (OSError, ValueError, AttributeError) as err:
        raise CheckpointError(f"not an open_clip config ({err})", path) from None
    if quick_gelu:
        raise CheckpointError("quick_gelu: true (OpenAI-style QuickGELU blocks); clipfleet's towers use GELU, "
                              "so these weights would compute other features", path)
    if no_causal_mask == bool(cfg["text"]["causal"]):
        want = "a causal" if cfg["text"]["causal"] else "a bidirectional"
        raise CheckpointError(f"text_cfg.no_causal_mask: {str(no_causal_mask).lower()}, the spec's text tower is {want} one "
                              "(model.text.causal)", path)


def run(args: argparse.Namespace) -> int:
    """Runs `openclip export|check`; one JSON line on stdout; user errors: one line on stderr, exit 2."""
    import sys

    from .errors import ClipfleetWorkerError
    from .tokenizers import build_tokenizer

    try:
        cfg = json.loads(args.model_json)
        vocab_size = build_tokenizer(cfg["tokenizer"]).vocab_size
        if args.openclip_command == "export":
            meta = json.loads(args.meta_json)
            written = write_export(_checkpoint_state(args.checkpoint), cfg, vocab_size, args.out, meta)
            if args.json:
                print(json.dumps({k: written[k] for k in ("dir", "files", "keys")}))
            else:
                print(f"exported stage {meta.get('stage')} of {meta.get('job')} (step {meta.get('step')}) to {written['dir']}: "
                      f"{', '.join(written['files'])}\n"
                      f"  open_clip.create_model_and_transforms('local-dir:{written['dir']}')")
        else:
            load_init_state(args.ref, cfg, vocab_size)
            print(json.dumps({"ok": True, "weights": weights_file_of(args.ref)}))
    except ClipfleetWorkerError as err:
        print(f"clipfleet openclip: {err}", file=sys.stderr)
        return 2
    return 0


def _checkpoint_state(directory: str) -> dict[str, Tensor]:
    """model.pt of a committed checkpoint, its bytes checked against the directory's manifest.json."""
    from . import checkpoint as ckpt

    manifest_path = os.path.join(directory, "manifest.json")
    try:
        with open(manifest_path) as f:
            files = {e["path"]: (e["sha256"], int(e["size"])) for e in json.load(f)["files"]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"not a committed checkpoint ({err})", manifest_path) from None
    state = ckpt.VerifiedCheckpoint.verified(directory, {ckpt.MODEL_FILE: files[ckpt.MODEL_FILE]} if ckpt.MODEL_FILE in files else {}).load(ckpt.MODEL_FILE)
    if not isinstance(state, dict):
        raise CheckpointError("does not hold a state dict", os.path.join(directory, ckpt.MODEL_FILE))
    return state
