"""USER: Unified Semantic Enhancement with Momentum Contrast for Image-Text Retrieval (Zhang et al., TIP 2024).

Public API::

    from model import USERConfig, USERModel
    model = USERModel.from_pretrained("org/user-sge")      # Hub id, local folder, or cached id offline
    images = model.encode_images([pil_image])               # [B, E], L2-normalised
    texts = model.encode_texts(["a red circle"])            # [B, E]
    scores = images @ texts.T
"""

from .config import USERConfig
from .loss import UTO
from .moco import MomentumUSER
from .user import USERModel

__all__ = ["USERConfig", "USERModel", "UTO", "MomentumUSER"]
