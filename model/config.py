"""USER configuration: one small dataclass, stored as ``config.json`` next to the weights."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

ENHANCEMENTS = ("sge", "cge", "none")
REGION_EXTRACTORS = ("precomputed", "clip-grid")


@dataclass
class USERConfig:
    """Everything needed to rebuild a USER model from its config file alone.

    Symbols follow the paper and the authors' release:
      embed_dim (E): joint embedding size (1024 in the paper).
      region_dim (D): size of one region feature (2048 for BUTD, the CLIP width for ``clip-grid``).
      num_regions (R): regions per image (36 for BUTD); the SGE local branch normalises over this axis.
      enhancement: ``sge`` (self-guided), ``cge`` (CLIP-guided) or ``none`` (plain VSE∞ embedding + GPO).
      enhance_scale (λ): temperature of the enhancement attention, softmax(λ·⟨g, region⟩); 1 in the release.
      dropout: dropout of the SGE local/global branches (0.4 in the release).
      gpo_pe_dim, gpo_hidden: GPO's positional-encoding size and GRU width (32, 32).
      text_backbone: a BERT-family encoder (Hub id or local folder); its tokenizer is used too.
      text_backbone_revision: the Hub revision the backbone is pinned to, when referenced by id.
      text_config: the backbone's ``transformers`` config, so the tower can be built with no download.
      freeze_text_backbone: a frozen backbone is referenced by name, not copied into the checkpoint.
      max_text_length: tokens per caption, [CLS] and [SEP] included.
      region_extractor: ``precomputed`` (SCAN/BUTD features) or ``clip-grid`` (open_clip patch tokens).
      clip_model, clip_pretrained: the open_clip vision tower for ``clip-grid`` and for CGE's guide:
        ``hf-hub:org/repo``, ``local-dir:path`` (relative to the checkpoint folder) or a built-in name
        with a pretrained tag.
      clip_dim: size of the CLIP image embedding that CGE projects to D.
    """

    embed_dim: int = 1024
    region_dim: int = 2048
    num_regions: int = 36
    enhancement: str = "sge"
    enhance_scale: float = 1.0
    dropout: float = 0.4
    gpo_pe_dim: int = 32
    gpo_hidden: int = 32
    text_backbone: str = "bert-base-uncased"
    text_backbone_revision: Optional[str] = None
    text_config: dict[str, Any] = field(default_factory=dict)
    freeze_text_backbone: bool = False
    max_text_length: int = 64
    region_extractor: str = "precomputed"
    clip_model: Optional[str] = None
    clip_pretrained: Optional[str] = None
    clip_dim: Optional[int] = None

    def __post_init__(self) -> None:
        if self.enhancement not in ENHANCEMENTS:
            raise ValueError(f"enhancement must be one of {ENHANCEMENTS}, got {self.enhancement!r}")
        if self.region_extractor not in REGION_EXTRACTORS:
            raise ValueError(
                f"region_extractor must be one of {REGION_EXTRACTORS}, got {self.region_extractor!r}"
            )
        if self.embed_dim % 2:
            raise ValueError(f"embed_dim must be even (the MLP hidden size is E/2), got {self.embed_dim}")
        if self.enhancement == "cge" and not self.clip_dim:
            raise ValueError("enhancement='cge' needs clip_dim, the size of the CLIP image embedding")
        if self.region_extractor == "clip-grid" and not self.clip_model:
            raise ValueError("region_extractor='clip-grid' needs clip_model (an open_clip name)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "USERConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown USER config keys {unknown}; known keys are {sorted(known)}")
        return cls(**values)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "USERConfig":
        try:
            values = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
        return cls.from_dict(values)
