"""The packaged prompt bank: prompt texts, their topics and their cosine-similarity matrix."""

import dataclasses
import json
from importlib import resources
from pathlib import Path

import numpy as np

PROMPT_BANK_VERSION = 1
DEFAULT_PROMPTS_FILE = "prompts.json"
DEFAULT_SIMILARITY_FILE = "prompt_similarity.npy"
# Tolerance for the symmetry and unit-diagonal checks of a stored float32 similarity matrix.
SIMILARITY_ATOL = 1e-3


@dataclasses.dataclass(frozen=True)
class PromptBank:
    """K prompts with topic ids [K] and a K x K cosine-similarity matrix."""

    texts: tuple[str, ...]
    topic_names: tuple[str, ...]
    topics: np.ndarray  # [K] int32 index into topic_names
    similarity: np.ndarray  # [K, K] float32

    @property
    def num_prompts(self) -> int:
        return len(self.texts)

    @property
    def num_topics(self) -> int:
        return len(self.topic_names)


def _data_path(name: str) -> Path:
    return Path(str(resources.files("rlli_jax.env") / "data" / name))


def load_prompt_bank(
    prompts_path: str | Path | None = None, similarity_path: str | Path | None = None
) -> PromptBank:
    """Load and validate a prompt bank; the packaged one when no paths are given.

    Raises:
        ValueError: a file is missing or malformed, or the similarity matrix is not K x K,
            not symmetric, not finite, outside [-1, 1] or without a unit diagonal.
    """
    prompts_path = Path(prompts_path) if prompts_path else _data_path(DEFAULT_PROMPTS_FILE)
    similarity_path = (
        Path(similarity_path) if similarity_path else _data_path(DEFAULT_SIMILARITY_FILE)
    )
    if not prompts_path.is_file():
        raise ValueError(f"prompt bank file not found: {prompts_path}")
    if not similarity_path.is_file():
        raise ValueError(f"prompt similarity matrix file not found: {similarity_path}")

    try:
        document = json.loads(prompts_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"prompt bank file {prompts_path} is not valid UTF-8 JSON: {error}"
        ) from error
    if not isinstance(document, dict):
        raise ValueError(
            f"prompt bank file {prompts_path} must hold a JSON object with 'version', 'topics' "
            f"and 'prompts', got {type(document).__name__}"
        )
    if document.get("version") != PROMPT_BANK_VERSION:
        raise ValueError(
            f"prompt bank file {prompts_path} has version {document.get('version')!r}, "
            f"expected {PROMPT_BANK_VERSION}"
        )
    topic_names = tuple(document.get("topics", ()))
    prompts = document.get("prompts", [])
    if not topic_names or not prompts:
        raise ValueError(f"prompt bank file {prompts_path} needs non-empty 'topics' and 'prompts'")
    topic_index = {name: i for i, name in enumerate(topic_names)}
    texts, topics = [], []
    if not isinstance(prompts, list) or not all(isinstance(name, str) for name in topic_names):
        raise ValueError(
            f"prompt bank file {prompts_path}: 'prompts' must be a list and 'topics' a list of "
            "strings"
        )
    for i, prompt in enumerate(prompts):
        valid = (
            isinstance(prompt, dict)
            and prompt.get("topic") in topic_index
            and isinstance(prompt.get("text"), str)
            and prompt["text"].strip()
        )
        if not valid:
            raise ValueError(
                f"prompt bank file {prompts_path}: prompt {i} needs a non-empty 'text' and a "
                f"'topic' from {list(topic_names)}, got {prompt!r}"
            )
        texts.append(prompt["text"])
        topics.append(topic_index[prompt["topic"]])

    try:
        similarity = np.load(similarity_path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"cannot read similarity matrix {similarity_path}: {error}") from error
    if not np.issubdtype(similarity.dtype, np.floating):
        raise ValueError(
            f"similarity matrix {similarity_path} has dtype {similarity.dtype}, expected floats"
        )
    num_prompts = len(texts)
    if similarity.shape != (num_prompts, num_prompts):
        raise ValueError(
            f"similarity matrix {similarity_path} has shape {similarity.shape}, "
            f"expected a square ({num_prompts}, {num_prompts}) matrix for {num_prompts} prompts"
        )
    validate_similarity(similarity, str(similarity_path))
    return PromptBank(
        texts=tuple(texts),
        topic_names=topic_names,
        topics=np.asarray(topics, dtype=np.int32),
        similarity=similarity.astype(np.float32),
    )


def validate_similarity(similarity: np.ndarray, source: str = "prompt_similarity") -> None:
    """Raise ValueError unless `similarity` is a finite, symmetric K x K matrix in [-1, 1]
    with a unit diagonal."""
    similarity = np.asarray(similarity)
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"{source} must be a square K x K matrix, got shape {similarity.shape}")
    if similarity.shape[0] < 1:
        raise ValueError(f"{source} must hold at least one prompt, got shape {similarity.shape}")
    if not np.all(np.isfinite(similarity)):
        raise ValueError(f"{source} contains NaN or infinite entries")
    if np.abs(similarity).max() > 1.0 + SIMILARITY_ATOL:
        raise ValueError(
            f"{source} entries must lie in [-1, 1], found {np.abs(similarity).max():.4f}"
        )
    if not np.allclose(similarity, similarity.T, atol=SIMILARITY_ATOL):
        raise ValueError(f"{source} must be symmetric")
    if not np.allclose(np.diag(similarity), 1.0, atol=SIMILARITY_ATOL):
        raise ValueError(f"{source} must have ones on the diagonal (cosine similarity)")
