"""Text backbones: find one by name (folder, Hub, cache, PyPI mirror) and record its config."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from transformers import AutoConfig

from .hub import resolve_folder

# Keys of a transformers config that describe where it came from, not what it is.
_PROVENANCE_KEYS = ("_name_or_path", "transformers_version", "architectures")


def resolve_text_backbone(name: str, revision: Optional[str] = None) -> Path:
    return resolve_folder(name, revision, what="text backbone")


def text_config_of(name: str, revision: Optional[str] = None) -> dict[str, Any]:
    """The backbone's transformers config as a plain dict, without machine-specific paths."""
    config = AutoConfig.from_pretrained(str(resolve_text_backbone(name, revision))).to_dict()
    return {k: v for k, v in config.items() if k not in _PROVENANCE_KEYS}
