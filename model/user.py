"""USERModel: both towers, raw-input encoding, and Hub-format save / load.

A published checkpoint is a folder (local or on the Hub) with ``config.json``, ``model.safetensors``,
the tokenizer files and a model card. Frozen external backbones (a frozen text encoder, the CLIP of
``clip-grid``) are referenced by name and revision in the config, never copied. MoCo key towers and
queues are training state and are not part of it.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn
from huggingface_hub import PyTorchModelHubMixin
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer
from transformers.initialization import no_init_weights

from .backbones import resolve_text_backbone
from .config import USERConfig
from .hub import CHECKPOINT_PATTERNS, CONFIG_NAME, PICKLED_WEIGHTS, WEIGHTS_NAME, resolve_folder
from .regions import Regions, build_extractor, resolve_clip_name
from .towers import ImageEncoder, ImageEncoding, TextEncoder

TEXT_BACKBONE_PREFIX = "txt_enc.bert."


# A fast tokenizer changes its own truncation settings on every call, so two threads (the demo serves
# several requests at once) must not call one at the same time; tokenizing a query takes ~0.2 ms.
TOKENIZER_LOCK = threading.Lock()
# The tokenizer and the CLIP are loaded on first use; two first requests at once must load them once.
LAZY_LOAD_LOCK = threading.RLock()


class USERModel(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="user-retrieval",
    tags=["image-text-retrieval", "user", "moco"],
    pipeline_tag="feature-extraction",
    license="mit",
):
    """USER (Zhang et al., IEEE TIP 2024): a dual encoder with semantic enhancement of image regions."""

    def __init__(self, config: USERConfig):
        super().__init__()
        self.config = config
        self.img_enc = ImageEncoder(config)
        self.txt_enc = TextEncoder(config)
        if config.freeze_text_backbone:
            self.txt_enc.bert.requires_grad_(False).eval()
        self.source_dir: Optional[Path] = None  # where from_pretrained found it (relative CLIP paths)
        self.eval_results: dict[str, dict[str, float]] = {}  # split/dataset -> metrics, for the model card
        self._tokenizer = None
        self._extractor = None
        self._extractor_owner: Optional["USERModel"] = None

    def train(self, mode: bool = True) -> "USERModel":
        super().train(mode)
        if self.config.freeze_text_backbone:
            self.txt_enc.bert.eval()  # frozen means frozen: no dropout either, so its output can be cached
        return self

    # ----------------------------------------------------------------------------------- encoding
    @property
    def device(self) -> torch.device:
        return self.img_enc.fc.weight.device

    def forward(
        self,
        regions: torch.Tensor,
        region_lengths: torch.Tensor,
        input_ids: torch.Tensor,
        text_lengths: torch.Tensor,
        clip_embeds: Optional[torch.Tensor] = None,
        text_hidden: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step's embeddings: images [B, E] and captions [B, E]."""
        images = self.img_enc(regions, region_lengths, clip_embeds)
        return images, self.txt_enc(input_ids, text_lengths, text_hidden)

    def encode_regions(
        self, regions: torch.Tensor, lengths: torch.Tensor, clip_embeds: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """regions [B, R, D], lengths [B] -> [B, E], L2-normalised. CGE also needs clip_embeds [B, C]."""
        return self.img_enc(regions.to(self.device), lengths, _to(clip_embeds, self.device))

    def encode_regions_detailed(self, regions: Regions) -> ImageEncoding:
        """Embeddings plus the attention maps (SGE region weights, enhancement attention, GPO weights)."""
        clip_embeds = _to(regions.clip_embeds, self.device)
        return self.img_enc.encode(regions.features.to(self.device), regions.lengths, clip_embeds)

    def encode_token_ids(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """input_ids [B, L] (pad id 0), lengths [B] -> [B, E], L2-normalised."""
        return self.txt_enc(input_ids.to(self.device), lengths)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            with LAZY_LOAD_LOCK:
                if self._tokenizer is None:
                    self._tokenizer = load_tokenizer(self.source_dir, self.config)
        return self._tokenizer

    @property
    def region_extractor(self):
        if self._extractor is None:
            with LAZY_LOAD_LOCK:
                if self._extractor is None:
                    owner = self._extractor_owner
                    self._extractor = owner.region_extractor if owner else build_extractor(self.config, self.source_dir)
        return self._extractor.to(self.device)

    def region_extractor_key(self) -> tuple:
        """Equal for two checkpoints whose region extractors are the same frozen model (then one can serve both)."""
        config = self.config
        return config.region_extractor, resolve_clip_name(config.clip_model, self.source_dir), config.clip_pretrained

    def share_region_extractor(self, other: "USERModel") -> None:
        """Use ``other``'s (frozen, stateless) region extractor instead of loading a second copy."""
        if other.region_extractor_key() != self.region_extractor_key():
            raise ValueError("the two checkpoints use different region extractors")
        self._extractor_owner = other  # resolved on first use: loading stays lazy

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """texts -> input_ids [B, L], lengths [B] (with [CLS] and [SEP], truncated to max_text_length)."""
        with TOKENIZER_LOCK:
            batch = self.tokenizer(
                list(texts), padding=True, truncation=True, max_length=self.config.max_text_length, return_tensors="pt"
            )
        return batch["input_ids"], batch["attention_mask"].sum(dim=1)

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` has before truncation (with [CLS] and [SEP])."""
        with TOKENIZER_LOCK:
            return len(self.tokenizer(text, truncation=False)["input_ids"])

    def extract_regions(self, images: Sequence[Image.Image]) -> Regions:
        return self.region_extractor(images)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Raw captions -> [B, E] through the checkpoint's tokenizer."""
        if isinstance(texts, str):
            raise TypeError("encode_texts takes a list of strings")
        input_ids, lengths = self.tokenize(texts)
        return self.encode_token_ids(input_ids, lengths)

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Raw PIL images -> [B, E] through the configured region extractor."""
        regions = self.extract_regions(images)
        return self.encode_regions(regions.features, regions.lengths, regions.clip_embeds)

    # ------------------------------------------------------------------------------- save / load
    def publishable_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights a checkpoint holds: everything but a frozen, referenced text backbone."""
        state = self.state_dict()
        if self.config.freeze_text_backbone:
            state = {k: v for k, v in state.items() if not k.startswith(TEXT_BACKBONE_PREFIX)}
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def _save_pretrained(self, save_directory: Path) -> None:
        from .card import write_model_card

        save_directory = Path(save_directory)
        save_file(self.publishable_state_dict(), str(save_directory / WEIGHTS_NAME), metadata={"format": "pt"})
        self.config.save(save_directory / CONFIG_NAME)
        self.tokenizer.save_pretrained(str(save_directory))
        drop_machine_settings(save_directory / "tokenizer_config.json")
        write_model_card(save_directory, self.config, self.eval_results)

    def load_text_backbone_weights(self) -> None:
        """Copy the pretrained weights of ``config.text_backbone`` into the text tower.

        A backbone folder whose ``model.safetensors`` names exactly the tower's weights is read directly
        (≈ 0.4 s less per model at start-up than building a second copy of the backbone with
        ``AutoModel.from_pretrained``); any other layout (a prefix, legacy names, pickled weights) goes
        through transformers.
        """
        path = resolve_text_backbone(self.config.text_backbone, self.config.text_backbone_revision)
        state = backbone_state_dict(path, self.txt_enc.bert)
        if state is None:
            state = AutoModel.from_pretrained(str(path)).state_dict()
        missing, unexpected = self.txt_enc.bert.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"text backbone {self.config.text_backbone} does not match text_config: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, revision: Optional[str] = None, *, map_location: str = "cpu"
    ) -> "USERModel":
        """Load a checkpoint from a local folder, a Hub id, or a Hub id in the local cache (offline).

        Weights are read from safetensors only and must match the config key for key.
        """
        folder = resolve_folder(name_or_path, revision, CHECKPOINT_PATTERNS, what="USER checkpoint")
        config_path = folder / CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} is missing: a USER checkpoint folder needs config.json")
        config = USERConfig.load(config_path)
        state = read_safetensors(folder)
        with no_init_weights():  # every weight is loaded below (exactly): random initialisation is wasted time
            model = cls(config)
        model.source_dir = folder
        if config.freeze_text_backbone:
            model.load_text_backbone_weights()
        load_exact(model, state, folder / WEIGHTS_NAME)
        return model.to(map_location).eval()


def drop_machine_settings(tokenizer_config: Path) -> None:
    """transformers writes the loading machine's ``local_files_only`` (true whenever HF_HUB_OFFLINE is set)
    into a saved tokenizer config; it says how that machine was set up, not what the tokenizer is, so a
    published checkpoint leaves it out."""
    if not tokenizer_config.is_file():
        return
    values = json.loads(tokenizer_config.read_text())
    if values.pop("local_files_only", None) is not None:
        tokenizer_config.write_text(json.dumps(values, indent=2, ensure_ascii=False) + "\n")


def backbone_state_dict(folder: Path, backbone: nn.Module) -> Optional[dict[str, torch.Tensor]]:
    """The weights in ``folder/model.safetensors`` when they are exactly ``backbone``'s (same names and
    shapes; non-persistent buffers aside), else None."""
    weights = Path(folder) / WEIGHTS_NAME
    if not weights.is_file():
        return None
    expected = backbone.state_dict()
    transient = {name for name, _ in backbone.named_buffers()} - set(expected)  # e.g. BERT's position_ids
    state = {k: v for k, v in load_file(str(weights)).items() if k not in transient}
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
        return None
    return state


def _to(tensor: Optional[torch.Tensor], device: torch.device) -> Optional[torch.Tensor]:
    return None if tensor is None else tensor.to(device)


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    weights = folder / WEIGHTS_NAME
    if weights.is_file():
        try:
            return load_file(str(weights))
        except Exception as err:
            raise ValueError(f"{weights} is not a readable safetensors file ({err}); re-save or re-download it") from err
    pickles = [name for name in PICKLED_WEIGHTS if (folder / name).exists()]
    if pickles:
        raise ValueError(
            f"{folder} holds pickled weights ({', '.join(pickles)}) and no {WEIGHTS_NAME}. Pickles can run code "
            "when loaded, so USER checkpoints load from safetensors only. Convert an official checkpoint with "
            "`python -m model.convert_official CKPT --text-backbone NAME --out DIR`."
        )
    raise FileNotFoundError(f"{weights} is missing: a USER checkpoint folder needs {WEIGHTS_NAME}")


def load_exact(model: USERModel, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """Load ``state`` into ``model``; any missing, unexpected or mis-shaped key is an error naming ``source``."""
    expected = model.publishable_state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = [
        f"{k}: file {tuple(state[k].shape)} vs config {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mis_shaped:
        raise ValueError(
            f"{source} does not match its config.json: missing {missing[:8]} ({len(missing)}), "
            f"unexpected {unexpected[:8]} ({len(unexpected)}), mis-shaped {mis_shaped[:8]}. "
            "The weights and config.json must come from the same training run."
        )
    model.load_state_dict(state, strict=not model.config.freeze_text_backbone)


def load_tokenizer(folder: Optional[Path], config: USERConfig):
    """The checkpoint's own tokenizer files when present, else the text backbone's."""
    source = folder if folder is not None and (folder / "tokenizer_config.json").is_file() else None
    if source is None:
        source = resolve_text_backbone(config.text_backbone, config.text_backbone_revision)
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    if tokenizer.pad_token_id != 0:
        raise ValueError(f"the tokenizer of {source} pads with id {tokenizer.pad_token_id}; USER expects 0")
    return tokenizer
