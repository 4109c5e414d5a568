"""Ratings dataset: record validation, loader line reports, hashing, and resumable collection."""

import gzip
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from rlli_jax.qoe.collect import (
    OutcomeRanges,
    collect_ratings,
    read_request_ids,
    request_id,
    sample_requests,
)
from rlli_jax.qoe.dataset import (
    RatingsFileError,
    dataset_hash,
    load_ratings,
    make_record,
    validate_record,
)
from rlli_jax.qoe.raters import RatingResult, SimulatorRater
from rlli_jax.qoe.template import template_hash

PROMPTS = ("a red apple on a table", "a lemon on a table", "a city street at night")


def good_record(index: int = 0, **overrides) -> dict:
    record = {
        "request_id": f"s0-{index:07d}",
        "status": "ok",
        "rating": 4,
        "traits": {
            "openness": 0.5,
            "conscientiousness": 0.25,
            "extraversion": 0.75,
            "agreeableness": 0.0,
            "neuroticism": 1.0,
        },
        "quality": 0.8,
        "latency_s": 3.5,
        "prompt_id": 2,
        "rater": {"backend": "simulator", "model": "analytic-persona-v1"},
        "simulated": True,
        "template_version": 1,
        "template_hash": template_hash(),
        "timestamp": "2026-01-01T00:00:00+00:00",
        "error": None,
        "raw_text": None,
    }
    record.update(overrides)
    return record


def write_lines(path, lines) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_validate_good_record():
    validate_record(good_record())
    validate_record(good_record(status="failed", rating=None, error="HTTP 500 after 5 attempts"))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"rating": 0}, r"'rating' must be in \[1, 5\], got 0"),
        ({"rating": 6}, r"'rating' must be in \[1, 5\], got 6"),
        ({"rating": 3.5}, "'rating' must be an integer"),
        ({"rating": True}, "'rating' must be an integer"),
        ({"rating": None}, "'rating' must be an integer"),
        ({"status": "failed"}, "'rating' must be null"),
        ({"status": "done"}, "'status' must be one of"),
        ({"quality": "high"}, "'quality' must be a number"),
        ({"quality": 1.5}, r"'quality' must be in \[0.0, 1.0\]"),
        ({"quality": float("nan")}, "'quality' must be finite, got nan"),
        ({"latency_s": 0.0}, r"'latency_s' must be in \(0.0"),
        ({"latency_s": float("inf")}, "'latency_s' must be finite"),
        ({"prompt_id": -1}, "'prompt_id' must be an integer >= 0"),
        ({"prompt_id": 1.0}, "'prompt_id' must be an integer >= 0"),
        ({"simulated": "yes"}, "'simulated' must be true or false"),
        ({"request_id": 7}, "'request_id' must be a non-empty string"),
        ({"rater": "simulator"}, "'rater' must be"),
        ({"traits": [0.5] * 5}, "'traits' must have exactly the keys"),
        ({"traits": {"openness": 0.5}}, "'traits' must have exactly the keys"),
    ],
)
def test_validate_rejects_bad_field(change, match):
    with pytest.raises(ValueError, match=match):
        validate_record(good_record(**change))


def test_validate_rejects_nan_trait():
    record = good_record()
    record["traits"]["openness"] = float("nan")
    with pytest.raises(ValueError, match="in field 'traits': field 'openness' must be finite"):
        validate_record(record)


def test_validate_reports_missing_field():
    record = good_record()
    del record["quality"]
    del record["timestamp"]
    with pytest.raises(ValueError, match=r"missing field\(s\) \['quality', 'timestamp'\]"):
        validate_record(record)


def bad_file_lines() -> list[str]:
    missing_rating = good_record(2)
    del missing_rating["rating"]
    return [
        json.dumps(good_record(0)),  # line 1: valid
        json.dumps(good_record(1, rating=7)),  # line 2: rating out of range
        json.dumps(missing_rating),  # line 3: missing field
        json.dumps(good_record(3, quality="0.5")),  # line 4: wrong type
        # line 5: NaN, which Python's json writes and reads as a bare NaN literal
        json.dumps(good_record(4, latency_s=float("nan"))),
        '{"request_id": "s0-0000005", "status": ',  # line 6: cut-off JSON
        "",  # line 7: blank, ignored
        json.dumps(good_record(6, status="failed", rating=None, error="HTTP 500")),  # line 8
        json.dumps(good_record(0)),  # line 9: duplicate request id
        json.dumps(good_record(7, rating=2)),  # line 10: valid
    ]


def test_loader_skips_and_counts_bad_lines(tmp_path):
    path = tmp_path / "ratings.jsonl"
    write_lines(path, bad_file_lines())
    dataset = load_ratings(path)

    assert dataset.num_ratings == 2
    assert dataset.request_ids == ("s0-0000000", "s0-0000007")
    np.testing.assert_array_equal(dataset.ratings, [4.0, 2.0])
    assert dataset.num_failed == 1
    reasons = {bad.line_number: bad.reason for bad in dataset.bad_lines}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 9]
    assert "'rating' must be in [1, 5], got 7" in reasons[2]
    assert "missing field(s) ['rating']" in reasons[3]
    assert "'quality' must be a number, got '0.5'" in reasons[4]
    assert "'latency_s' must be finite, got nan" in reasons[5]
    assert "invalid JSON" in reasons[6]
    assert "duplicate request_id 's0-0000000'" in reasons[9]


def test_loader_skips_line_with_invalid_utf8(tmp_path):
    path = tmp_path / "ratings.jsonl"
    lines = [json.dumps(good_record(0)), json.dumps(good_record(1)), json.dumps(good_record(2))]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    # One undecodable byte inside the second record's request id.
    data = data.replace(b"s0-0000001", b"s0-\xff000001")
    path.write_bytes(data)
    dataset = load_ratings(path)
    assert dataset.request_ids == ("s0-0000000", "s0-0000002")
    assert [(bad.line_number, bad.reason) for bad in dataset.bad_lines] == [(2, "not valid UTF-8")]


def test_loader_strict_fails_with_line_numbers(tmp_path):
    path = tmp_path / "ratings.jsonl"
    write_lines(path, bad_file_lines())
    with pytest.raises(RatingsFileError, match="6 invalid line") as error:
        load_ratings(path, strict=True)
    message = str(error.value)
    assert str(path) in message
    for line_number in (2, 3, 4, 5, 6, 9):
        assert f"line {line_number}:" in message


def test_loader_strict_accepts_valid_file(tmp_path):
    path = tmp_path / "ratings.jsonl"
    write_lines(path, [json.dumps(good_record(i)) for i in range(3)])
    dataset = load_ratings(path, strict=True)
    assert dataset.num_ratings == 3
    assert dataset.bad_lines == ()
    assert dataset.all_simulated
    assert dataset.traits.shape == (3, 5)
    assert dataset.traits.dtype == np.float32


def test_loader_missing_file(tmp_path):
    with pytest.raises(RatingsFileError, match="ratings file not found"):
        load_ratings(tmp_path / "absent.jsonl")


def test_loader_corrupt_gzip(tmp_path):
    path = tmp_path / "ratings.jsonl.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(RatingsFileError, match="cannot read ratings file"):
        load_ratings(path)


def test_hash_same_for_plain_and_gzip(tmp_path):
    lines = [json.dumps(good_record(i)) for i in range(4)]
    plain = tmp_path / "ratings.jsonl"
    write_lines(plain, lines)
    compressed = tmp_path / "ratings.jsonl.gz"
    compressed.write_bytes(gzip.compress(plain.read_bytes()))

    assert dataset_hash(plain) == dataset_hash(compressed)
    assert load_ratings(plain).dataset_hash == dataset_hash(plain)
    assert load_ratings(compressed).dataset_hash == dataset_hash(plain)


def test_hash_changes_with_content(tmp_path):
    first = tmp_path / "a.jsonl"
    second = tmp_path / "b.jsonl"
    write_lines(first, [json.dumps(good_record(0))])
    write_lines(second, [json.dumps(good_record(0, rating=3))])
    assert dataset_hash(first) != dataset_hash(second)


def test_sample_requests_depend_on_index_only():
    all_requests = sample_requests(5, range(10), PROMPTS)
    some_requests = sample_requests(5, [3, 7], PROMPTS)
    assert some_requests == [all_requests[3], all_requests[7]]
    assert all_requests[3].request_id == request_id(5, 3) == "s5-0000003"
    other_seed = sample_requests(6, [3], PROMPTS)[0]
    assert other_seed.traits != all_requests[3].traits


def test_sample_requests_within_ranges():
    ranges = OutcomeRanges(min_quality=0.2, max_quality=0.9, min_latency_s=0.5, max_latency_s=20)
    requests = sample_requests(0, range(300), PROMPTS, ranges)
    quality = np.array([r.quality for r in requests])
    latency = np.array([r.latency_s for r in requests])
    assert quality.min() >= 0.2
    assert quality.max() <= 0.9
    assert latency.min() >= 0.5
    assert latency.max() <= 20
    # Log-uniform latency: about half the requests below the geometric mid-point.
    below = np.mean(latency < math.sqrt(0.5 * 20))
    assert 0.4 < below < 0.6
    assert {r.prompt_text for r in requests} == set(PROMPTS)


def test_outcome_ranges_rejects_bad_range():
    with pytest.raises(ValueError, match="quality range"):
        OutcomeRanges(min_quality=0.8, max_quality=0.2)
    with pytest.raises(ValueError, match="latency range"):
        OutcomeRanges(min_latency_s=0.0)


def test_simulator_rater_deterministic_per_id():
    requests = sample_requests(0, range(20), PROMPTS)
    rater = SimulatorRater(seed=0)
    forward = rater.rate(requests)
    backward = rater.rate(requests[::-1])[::-1]
    assert [r.rating for r in forward] == [r.rating for r in backward]
    assert all(r.ok and 1 <= r.rating <= 5 for r in forward)


def test_collect_resumes_without_repeats(tmp_path):
    path = tmp_path / "ratings.jsonl"
    rater = SimulatorRater(seed=0)
    collect_ratings(rater, sample_requests(0, range(5), PROMPTS), path)

    done = read_request_ids(path)
    assert done == {request_id(0, i) for i in range(5)}
    pending = [i for i in range(8) if request_id(0, i) not in done]
    assert pending == [5, 6, 7]
    collect_ratings(rater, sample_requests(0, pending, PROMPTS), path)

    dataset = load_ratings(path, strict=True)
    assert dataset.request_ids == tuple(request_id(0, i) for i in range(8))
    assert dataset.all_simulated


def test_collect_repairs_cut_off_last_line(tmp_path):
    path = tmp_path / "ratings.jsonl"
    rater = SimulatorRater(seed=0)
    collect_ratings(rater, sample_requests(0, range(2), PROMPTS), path)
    with open(path, "a", encoding="utf-8") as stream:
        stream.write('{"request_id": "s0-0000002", "sta')  # a write cut off mid-line
    collect_ratings(rater, sample_requests(0, [2, 3], PROMPTS), path)

    dataset = load_ratings(path)
    assert dataset.num_ratings == 4
    assert [bad.line_number for bad in dataset.bad_lines] == [3]


def test_collect_rejects_gzip_output(tmp_path):
    with pytest.raises(ValueError, match="plain JSONL"):
        collect_ratings(SimulatorRater(), [], tmp_path / "ratings.jsonl.gz")


def test_make_record_of_failure():
    request = sample_requests(0, [0], PROMPTS)[0]
    result = RatingResult(request=request, rating=None, raw_text="oops", error="unparsable")
    record = make_record(result, SimulatorRater())
    validate_record(record)
    assert record["status"] == "failed"
    assert record["rating"] is None
    assert record["raw_text"] == "oops"
    assert record["simulated"] is True
    assert record["traits"]["openness"] == request.traits[0]


def load_script(name: str):
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rate_script_resumes(tmp_path, capsys):
    rate_main = load_script("rate").main

    path = tmp_path / "ratings.jsonl"
    assert rate_main(["--backend", "simulator", "--num", "6", "--out", str(path)]) == 0
    assert "6 new ratings" in capsys.readouterr().out
    assert rate_main(["--backend", "simulator", "--num", "9", "--out", str(path)]) == 0
    output = capsys.readouterr().out
    assert "3 new ratings" in output
    assert "6 requests already present" in output
    assert "[simulated ratings]" in output
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 9
    assert len({json.loads(line)["request_id"] for line in lines}) == 9


def test_shipped_dataset_valid():
    from importlib import resources

    path = resources.files("rlli_jax.qoe") / "data" / "ratings_simulated_v1.jsonl.gz"
    dataset = load_ratings(str(path), strict=True)
    assert dataset.num_ratings >= 20_000
    assert dataset.all_simulated
    assert dataset.num_failed == 0
    assert dataset.template_hashes == (template_hash(),)
    assert set(np.unique(dataset.ratings)) == {1.0, 2.0, 3.0, 4.0, 5.0}


def test_summary_of_simulated_ratings(tmp_path):
    from rlli_jax.qoe.summary import summarise_ratings

    path = tmp_path / "ratings.jsonl"
    collect_ratings(SimulatorRater(seed=0), sample_requests(0, range(400), PROMPTS), path)
    summary = summarise_ratings(load_ratings(path))

    assert summary["num_ratings"] == 400
    assert summary["parse_rate"] == 1.0
    assert sum(summary["histogram"].values()) == 400
    assert sum(row["num_ratings"] for row in summary["by_quality"]) == 400
    assert sum(row["num_ratings"] for row in summary["by_latency"]) == 400
    # The simulated persona likes quality and dislikes waiting.
    assert summary["spearman_quality"] > 0.2
    assert summary["spearman_log_latency"] < -0.4
    assert summary["spearman_simulator"] > 0.8
