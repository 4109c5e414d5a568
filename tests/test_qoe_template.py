"""Persona descriptions, the rating template and strict rating parsing."""

import pytest

from rlli_jax.qoe.personas import TRAIT_NAMES, describe_persona
from rlli_jax.qoe.template import (
    TEMPLATE_VERSION,
    RatingParseError,
    RatingRequest,
    describe_quality,
    parse_rating,
    render_messages,
    template_hash,
)

# The hash of template version 1. A change to any template text changes it: then bump
# TEMPLATE_VERSION and update this value, so old and new ratings are never mixed unknowingly.
TEMPLATE_V1_HASH = "b289fabb8fd4b631d327fd56b0db8e77509329c6439d48c9c127a67725b21f14"


def make_request(**overrides) -> RatingRequest:
    values = {
        "request_id": "s0-0000001",
        "traits": (0.9, 0.2, 0.5, 0.45, 0.7),
        "quality": 0.83,
        "latency_s": 12.34,
        "prompt_id": 3,
        "prompt_text": "a red apple on a wooden table",
    }
    values.update(overrides)
    return RatingRequest(**values)


def test_persona_description_deterministic():
    traits = (0.123, 0.456, 0.789, 0.0, 1.0)
    assert describe_persona(traits) == describe_persona(list(traits))
    assert describe_persona(traits) == describe_persona((0.1234, 0.4561, 0.7889, 0.0, 1.0))


def test_persona_description_names_every_trait():
    text = describe_persona((0.9, 0.1, 0.5, 0.65, 0.3))
    for name in TRAIT_NAMES:
        assert f"Your {name} is" in text
    assert "very high (0.90 of 1)" in text
    assert "very low (0.10 of 1)" in text
    assert "moderate (0.50 of 1)" in text


def test_persona_description_differs_by_trait():
    calm = describe_persona((0.5, 0.5, 0.5, 0.5, 0.1))
    anxious = describe_persona((0.5, 0.5, 0.5, 0.5, 0.9))
    assert calm != anxious
    assert "calm and emotionally stable" in calm
    assert "impatient" in anxious


@pytest.mark.parametrize(
    ("traits", "match"),
    [
        ((0.5,) * 4, r"shape \(5,\)"),
        ((0.5, 0.5, 0.5, 0.5, 1.5), r"in \[0, 1\]"),
        ((0.5, 0.5, float("nan"), 0.5, 0.5), "finite"),
    ],
)
def test_persona_description_rejects_bad_traits(traits, match):
    with pytest.raises(ValueError, match=match):
        describe_persona(traits)


def test_template_hash_pinned():
    assert TEMPLATE_VERSION == 1
    assert template_hash() == TEMPLATE_V1_HASH


def test_template_hash_stable_across_calls():
    template_hash.cache_clear()
    first = template_hash()
    template_hash.cache_clear()
    assert template_hash() == first


def test_render_messages_contents():
    system, user = render_messages(make_request())
    assert system["role"] == "system"
    assert user["role"] == "user"
    assert "a red apple on a wooden table" in user["content"]
    assert "(0.83 of 1)" in user["content"]
    assert describe_quality(0.83) in user["content"]
    assert "12.3 seconds" in user["content"]
    assert '{"rating": 3}' in user["content"]
    assert describe_persona((0.9, 0.2, 0.5, 0.45, 0.7)) in user["content"]


def test_quality_words_monotone_bands():
    assert describe_quality(0.0).startswith("unusable")
    assert describe_quality(0.5).startswith("mediocre")
    assert describe_quality(0.95).startswith("excellent")
    assert describe_quality(1.0).startswith("excellent")


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("request_id", "", "request_id"),
        ("traits", (0.5, 0.5), "traits"),
        ("quality", 1.2, "quality"),
        ("latency_s", 0.0, "latency_s"),
        ("latency_s", float("inf"), "latency_s"),
    ],
)
def test_rating_request_rejects_bad_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        make_request(**{field: value})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"rating": 4}', 4),
        ('  {"rating": 1}\n', 1),
        ('```json\n{"rating": 5}\n```', 5),
        ('```\n{"rating": 2}\n```', 2),
        ('{"rating": 3, "reason": "slow but fine"}', 3),
    ],
)
def test_parse_rating_accepts(text, expected):
    assert parse_rating(text) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("4", "JSON object"),
        ("I would rate it 4 out of 5.", "not valid JSON"),
        ('Rating: {"rating": 4}', "not valid JSON"),
        ('{"rating": 4.5}', "integer"),
        ('{"rating": 4.0}', "integer"),
        ('{"rating": "4"}', "integer"),
        ('{"rating": true}', "integer"),
        ('{"rating": 0}', r"\[1, 5\]"),
        ('{"rating": 6}', r"\[1, 5\]"),
        ('{"score": 4}', 'no "rating" key'),
        ('[{"rating": 4}]', "JSON object"),
        ("", "not valid JSON"),
    ],
)
def test_parse_rating_rejects(text, match):
    with pytest.raises(RatingParseError, match=match):
        parse_rating(text)
