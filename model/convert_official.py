"""Convert a checkpoint of the authors' release into a USER checkpoint folder (safetensors).

    python -m model.convert_official model_best.pth --text-backbone bert-base-uncased --out user-f30k-sge

The release saves ``{'model': [image_state, text_state], 'opt': argparse.Namespace, 'epoch', ...}``
with ``torch.save``. It is read with ``weights_only=True``, allowing ``argparse.Namespace`` and nothing
else, so a checkpoint that carries code is refused instead of run.
"""

from __future__ import annotations

import argparse
from argparse import Namespace
from pathlib import Path

import torch

from .backbones import text_config_of
from .config import USERConfig
from .user import USERModel, load_exact

# Buffers that some transformers versions stored in BERT state dicts and later dropped.
DROPPABLE_SUFFIXES = ("embeddings.position_ids",)


def read_official(path: str | Path) -> dict:
    with torch.serialization.safe_globals([Namespace]):
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(
                f"{path} could not be read as a weights-only checkpoint ({type(err).__name__}: {err}). "
                "Only tensors, plain containers and argparse.Namespace are accepted."
            ) from err
    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), (list, tuple))):
        raise ValueError(f"{path} is not in the release's format {{'model': [image_state, text_state], 'opt': ...}}")
    return checkpoint


def config_from_opt(opt: Namespace | None, text_backbone: str, enhancement: str) -> USERConfig:
    opt = opt or Namespace()
    return USERConfig(
        embed_dim=getattr(opt, "embed_size", 1024),
        region_dim=getattr(opt, "img_dim", 2048),
        num_regions=getattr(opt, "num_regions", 36),
        enhancement=enhancement,
        text_backbone=text_backbone,
        text_config=text_config_of(text_backbone),
        max_text_length=getattr(opt, "max_text_length", 64),
    )


def official_state_dict(image_state: dict, text_state: dict) -> dict[str, torch.Tensor]:
    """The release's two state dicts under this project's names (``img_enc.``/``txt_enc.`` prefixes)."""
    state = {}
    for prefix, part in (("img_enc.", image_state), ("txt_enc.", text_state)):
        for key, value in part.items():
            key = key.removeprefix("module.")  # saved from DataParallel / DDP
            if key.endswith(DROPPABLE_SUFFIXES):
                continue
            state[prefix + key] = value
    return state


def convert(checkpoint_path: str | Path, text_backbone: str, out: str | Path | None = None) -> USERModel:
    checkpoint = read_official(checkpoint_path)
    image_state, text_state = checkpoint["model"][:2]
    state = official_state_dict(image_state, text_state)
    enhancement = "sge" if any(k.startswith("img_enc.v_sa.") for k in state) else "none"
    config = config_from_opt(checkpoint.get("opt"), text_backbone, enhancement)
    if "img_enc.v_sa.embedding_local.1.weight" in state:
        config.num_regions = int(state["img_enc.v_sa.embedding_local.1.weight"].shape[0])
    model = USERModel(config)
    # Keep the release's buffers (BatchNorm statistics) and weights exactly, in float32.
    load_exact(model, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, checkpoint_path)
    model.eval()
    if out is not None:
        metrics = {}
        if "best_rsum" in checkpoint:
            metrics["release (reported)"] = {"rsum": float(checkpoint["best_rsum"])}
        model.eval_results = metrics
        model.save_pretrained(out)
    return model


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="the release's .pth / .pth.tar file")
    p.add_argument("--text-backbone", required=True, help="the BERT it was trained from (Hub id or folder)")
    p.add_argument("--out", required=True, help="output folder (Hub format)")
    args = p.parse_args(argv)
    model = convert(args.checkpoint, args.text_backbone, args.out)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: USER-{model.config.enhancement.upper()}, {n_params / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()
