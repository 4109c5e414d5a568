"""Checks of the packaged prompt bank and of load_prompt_bank's input validation."""

import json

import numpy as np
import pytest

from rlli_jax.env.prompts import load_prompt_bank


@pytest.fixture(scope="module")
def bank():
    return load_prompt_bank()


def _write_bank(tmp_path, document, similarity):
    prompts_path = tmp_path / "prompts.json"
    similarity_path = tmp_path / "similarity.npy"
    prompts_path.write_text(json.dumps(document), encoding="utf-8")
    np.save(similarity_path, similarity)
    return prompts_path, similarity_path


def _small_document():
    return {
        "version": 1,
        "topics": ["food", "animals"],
        "prompts": [
            {"id": 0, "topic": "food", "text": "an apple on a wooden table"},
            {"id": 1, "topic": "food", "text": "a lemon on a wooden table"},
            {"id": 2, "topic": "animals", "text": "a red fox in the snow"},
        ],
    }


def _small_similarity():
    return np.array([[1.0, 0.6, 0.1], [0.6, 1.0, 0.2], [0.1, 0.2, 1.0]], dtype=np.float32)


def test_packaged_bank_sizes(bank):
    assert bank.num_prompts >= 200
    assert bank.num_topics >= 12
    assert len(bank.topics) == bank.num_prompts
    assert set(np.unique(bank.topics)) == set(range(bank.num_topics))


def test_packaged_bank_prompts_are_unique(bank):
    assert len(set(bank.texts)) == bank.num_prompts
    assert all(text.strip() for text in bank.texts)


def test_packaged_similarity_matrix_valid(bank):
    similarity = bank.similarity
    assert similarity.shape == (bank.num_prompts, bank.num_prompts)
    assert similarity.dtype == np.float32
    assert np.all(np.isfinite(similarity))
    assert np.array_equal(similarity, similarity.T)
    assert np.array_equal(np.diag(similarity), np.ones(bank.num_prompts, dtype=np.float32))
    assert similarity.min() >= -1.0
    assert similarity.max() <= 1.0


def test_packaged_similarity_within_exceeds_across(bank):
    same_topic = bank.topics[:, None] == bank.topics[None, :]
    off_diagonal = ~np.eye(bank.num_prompts, dtype=bool)
    within_mean = bank.similarity[same_topic & off_diagonal].mean()
    across_mean = bank.similarity[~same_topic].mean()
    assert within_mean > across_mean


def test_load_missing_prompts_file(tmp_path):
    _, similarity_path = _write_bank(tmp_path, _small_document(), _small_similarity())
    with pytest.raises(ValueError, match="prompt bank file not found"):
        load_prompt_bank(tmp_path / "absent.json", similarity_path)


def test_load_missing_similarity_file(tmp_path):
    prompts_path, _ = _write_bank(tmp_path, _small_document(), _small_similarity())
    with pytest.raises(ValueError, match="similarity matrix file not found"):
        load_prompt_bank(prompts_path, tmp_path / "absent.npy")


def test_load_small_bank(tmp_path):
    prompts_path, similarity_path = _write_bank(tmp_path, _small_document(), _small_similarity())
    small_bank = load_prompt_bank(prompts_path, similarity_path)
    assert small_bank.num_prompts == 3
    assert small_bank.topic_names == ("food", "animals")
    assert small_bank.topics.tolist() == [0, 0, 1]


def test_load_non_square_matrix(tmp_path):
    prompts_path, similarity_path = _write_bank(
        tmp_path, _small_document(), np.ones((3, 2), dtype=np.float32)
    )
    with pytest.raises(ValueError, match=r"shape \(3, 2\), expected a square \(3, 3\)"):
        load_prompt_bank(prompts_path, similarity_path)


def test_load_wrong_size_matrix(tmp_path):
    prompts_path, similarity_path = _write_bank(
        tmp_path, _small_document(), np.eye(4, dtype=np.float32)
    )
    with pytest.raises(ValueError, match=r"shape \(4, 4\), expected a square \(3, 3\)"):
        load_prompt_bank(prompts_path, similarity_path)


def test_load_nan_matrix(tmp_path):
    similarity = _small_similarity()
    similarity[0, 2] = similarity[2, 0] = np.nan
    prompts_path, similarity_path = _write_bank(tmp_path, _small_document(), similarity)
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_prompt_bank(prompts_path, similarity_path)


def test_load_invalid_json(tmp_path):
    prompts_path, similarity_path = _write_bank(tmp_path, _small_document(), _small_similarity())
    prompts_path.write_text('{"version": 1, "topics": ["food"', encoding="utf-8")
    with pytest.raises(ValueError, match="is not valid UTF-8 JSON"):
        load_prompt_bank(prompts_path, similarity_path)


def test_load_unknown_topic(tmp_path):
    document = _small_document()
    document["prompts"][2]["topic"] = "vehicles"
    prompts_path, similarity_path = _write_bank(tmp_path, document, _small_similarity())
    with pytest.raises(ValueError, match="prompt 2 needs a non-empty 'text' and a 'topic'"):
        load_prompt_bank(prompts_path, similarity_path)


@pytest.mark.parametrize(
    ("prompts_text", "match"),
    [
        ("[1, 2]", "must hold a JSON object"),
        ("null", "must hold a JSON object"),
        ('{"version": 1, "topics": ["a"], "prompts": ["text"]}', "prompt 0 needs"),
        ('{"version": 1, "topics": ["a"], "prompts": [{"topic": "a", "text": " "}]}', "non-empty"),
    ],
)
def test_malformed_prompt_documents_raise(tmp_path, prompts_text, match):
    prompts_path = tmp_path / "prompts.json"
    prompts_path.write_text(prompts_text)
    similarity_path = tmp_path / "similarity.npy"
    np.save(similarity_path, np.ones((1, 1), np.float32))
    with pytest.raises(ValueError, match=match):
        load_prompt_bank(prompts_path, similarity_path)


def test_non_utf8_and_bad_matrices_raise(tmp_path):
    prompts_path = tmp_path / "prompts.json"
    prompts_path.write_bytes(
        b'{"version": 1, "topics": ["a"], "prompts": [{"topic": "a", "text": "\xff"}]}'
    )
    similarity_path = tmp_path / "similarity.npy"
    np.save(similarity_path, np.ones((1, 1), np.float32))
    with pytest.raises(ValueError, match="UTF-8"):
        load_prompt_bank(prompts_path, similarity_path)
    prompts_path.write_text(
        '{"version": 1, "topics": ["a"], "prompts": [{"topic": "a", "text": "x"}]}'
    )
    np.save(similarity_path, np.ones((1, 1), bool))
    with pytest.raises(ValueError, match="dtype bool"):
        load_prompt_bank(prompts_path, similarity_path)
    similarity_path.write_bytes(b"")
    with pytest.raises(ValueError, match="cannot read similarity matrix"):
        load_prompt_bank(prompts_path, similarity_path)
