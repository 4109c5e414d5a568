"""The versioned rating template: one chat request per rating, and strict parsing of the reply.

A rater sees a persona description, the text the user asked the image service for, the image
quality in words and as a number, and the waiting time in seconds, and replies with one integer
1-5 as JSON: {"rating": 4}. The template hash (SHA-256 of the version and every fixed text) is
stored with each rating, so ratings collected with different wordings are never mixed unknowingly.
Change any text below and bump TEMPLATE_VERSION.
"""

import dataclasses
import functools
import hashlib
import json
import math
import re

from rlli_jax.qoe.personas import NUM_TRAITS, describe_persona

TEMPLATE_VERSION = 1
MIN_RATING = 1
MAX_RATING = 5

SYSTEM_MESSAGE = (
    "You role-play one user of an AI image-generation service. You have the personality "
    "described below and rate your experience the way that person would. Reply with JSON only."
)

USER_MESSAGE_TEMPLATE = (
    "Your personality: {persona}\n\n"
    'You asked the service for this image: "{prompt}"\n\n'
    "What you received:\n"
    "- Image quality: {quality_words} ({quality:.2f} of 1).\n"
    "- Waiting time: {latency_s:.1f} seconds from your request to the finished image.\n\n"
    "How satisfied are you, on a scale from 1 (very dissatisfied) to 5 (very satisfied)? "
    'Answer with one JSON object and nothing else, for example {{"rating": 3}}.'
)

# Quality words by the upper bound of their band: the first band whose bound is >= q applies.
QUALITY_WORDS = (
    (0.2, "unusable: mostly noise, does not show what you asked for"),
    (0.4, "poor: blurry and only loosely matches the request"),
    (0.6, "mediocre: recognisable but with visible flaws"),
    (0.8, "good: clear and matches the request"),
    (1.0, "excellent: sharp, detailed and matches the request well"),
)


@dataclasses.dataclass(frozen=True)
class RatingRequest:
    """One rating to collect: a persona, the prompt it sent and the service outcome it received."""

    request_id: str
    traits: tuple[float, ...]  # [5] Big Five traits in [0, 1], TRAIT_NAMES order
    quality: float  # image quality in [0, 1]
    latency_s: float  # waiting time in seconds, > 0
    prompt_id: int
    prompt_text: str

    def __post_init__(self):
        if not self.request_id:
            raise ValueError("request_id must be a non-empty string")
        if len(self.traits) != NUM_TRAITS:
            raise ValueError(f"traits must have {NUM_TRAITS} values, got {len(self.traits)}")
        if not all(math.isfinite(t) and 0.0 <= t <= 1.0 for t in self.traits):
            raise ValueError(f"traits must be finite and in [0, 1], got {list(self.traits)}")
        if not (math.isfinite(self.quality) and 0.0 <= self.quality <= 1.0):
            raise ValueError(f"quality must be finite and in [0, 1], got {self.quality}")
        if not (math.isfinite(self.latency_s) and self.latency_s > 0.0):
            raise ValueError(f"latency_s must be finite and > 0, got {self.latency_s}")


def describe_quality(quality: float) -> str:
    """Return the words for an image quality in [0, 1]."""
    for upper_bound, words in QUALITY_WORDS:
        if quality <= upper_bound:
            return words
    return QUALITY_WORDS[-1][1]


def render_messages(request: RatingRequest) -> list[dict[str, str]]:
    """Build the chat messages (system, user) that ask for one rating."""
    user_message = USER_MESSAGE_TEMPLATE.format(
        persona=describe_persona(request.traits),
        prompt=request.prompt_text,
        quality_words=describe_quality(request.quality),
        quality=request.quality,
        latency_s=request.latency_s,
    )
    return [
        {"role": "system", "content": SYSTEM_MESSAGE},
        {"role": "user", "content": user_message},
    ]


@functools.cache
def template_hash() -> str:
    """Return the SHA-256 hex digest of the template version and all of its fixed texts."""
    document = {
        "version": TEMPLATE_VERSION,
        "system": SYSTEM_MESSAGE,
        "user": USER_MESSAGE_TEMPLATE,
        "quality_words": QUALITY_WORDS,
        # describe_persona's wording is part of what the rater reads.
        "persona_example": describe_persona((0.1, 0.3, 0.5, 0.7, 0.9)),
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# One optional Markdown code fence around the whole reply, which chat models often add.
_CODE_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?\s*```$", re.DOTALL)


class RatingParseError(ValueError):
    """A model's reply is not one JSON object with an integer "rating" in 1-5."""


def parse_rating(text: str) -> int:
    """Parse a model's reply strictly and return the rating.

    Accepted: one JSON object, optionally inside one Markdown code fence, whose "rating" is an
    integer from 1 to 5 (other keys are ignored). Anything else raises, because guessing a number
    out of free text would put invented ratings into the dataset.

    Raises:
        RatingParseError: the reply does not meet that rule.
    """
    stripped = text.strip()
    fenced = _CODE_FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1).strip()
    try:
        document = json.loads(stripped)
    except json.JSONDecodeError as error:
        raise RatingParseError(f"reply is not valid JSON: {error}") from error
    except RecursionError:
        raise RatingParseError(
            "reply is JSON nested deeper than Python's recursion limit, not a rating object"
        ) from None
    if not isinstance(document, dict):
        raise RatingParseError(f"reply must be a JSON object, got {type(document).__name__}")
    if "rating" not in document:
        raise RatingParseError(f'reply has no "rating" key, keys are {sorted(document)}')
    rating = document["rating"]
    # bool is a subclass of int in Python, and JSON true is not a rating.
    if isinstance(rating, bool) or not isinstance(rating, int):
        raise RatingParseError(f'"rating" must be an integer, got {rating!r}')
    if not MIN_RATING <= rating <= MAX_RATING:
        raise RatingParseError(f'"rating" must be in [{MIN_RATING}, {MAX_RATING}], got {rating}')
    return rating
