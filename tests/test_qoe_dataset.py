"""Ratings dataset: record validation, loader line reports, hashing, and resumable collection."""

import dataclasses
import gzip
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlli_jax.qoe.collect import (
    OutcomeRanges,
    collect_ratings,
    collection_settings,
    lock_ratings_file,
    prepare_ratings_file,
    read_request_ids,
    read_request_statuses,
    request_id,
    sample_requests,
    settings_path,
)
from rlli_jax.qoe.dataset import (
    RatingsFileError,
    dataset_hash,
    load_ratings,
    make_record,
    validate_record,
)
from rlli_jax.qoe.raters import UNPARSABLE_REPLY_PREFIX, RatingResult, SimulatorRater
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
        ({"prompt_id": 2**31}, "'prompt_id' must be at most 2147483647, got 2147483648"),
        ({"quality": 10**400}, "'quality' must be finite, got an integer of 401 digits"),
        ({"latency_s": 10**400}, "'latency_s' must be finite, got an integer of 401 digits"),
        # Finite as a float64 but inf as the float32 that the loader stores.
        ({"latency_s": 1e300}, r"'latency_s' must be in \(0.0, 3.4028\d*e\+38\], got 1e\+300"),
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


def test_loader_accepts_retry_after_failure(tmp_path):
    path = tmp_path / "ratings.jsonl"
    failed = good_record(0, status="failed", rating=None, error="HTTP 500")
    write_lines(
        path,
        [
            json.dumps(failed),
            json.dumps(failed),
            json.dumps(good_record(0, rating=3)),  # the retry that succeeded
            json.dumps(good_record(0, rating=5)),  # a repeat after "ok": invalid
            json.dumps(good_record(1, status="failed", rating=None, error="timeout")),
        ],
    )
    dataset = load_ratings(path)
    assert dataset.request_ids == ("s0-0000000",)
    np.testing.assert_array_equal(dataset.ratings, [3.0])
    assert dataset.num_failed == 1
    assert [bad.line_number for bad in dataset.bad_lines] == [4]
    assert "duplicate request_id 's0-0000000'" in dataset.bad_lines[0].reason


def test_loader_skips_oversized_values(tmp_path):
    path = tmp_path / "ratings.jsonl"
    lines = [
        json.dumps(good_record(0)),
        json.dumps(good_record(1, latency_s=10**400)),  # too large for a float
        json.dumps(good_record(2, prompt_id=2**40)),  # too large for int32
        "[" * 100_000,  # nested past Python's recursion limit
    ]
    write_lines(path, lines)
    dataset = load_ratings(path)
    assert dataset.request_ids == ("s0-0000000",)
    assert [bad.line_number for bad in dataset.bad_lines] == [2, 3, 4]
    assert read_request_statuses(path) == {"s0-0000000": "ok"}


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
    message = r"\.gz path, but ratings are appended to a plain JSONL file"
    with pytest.raises(ValueError, match=message):
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


def test_read_statuses_skip_invalid_lines(tmp_path):
    path = tmp_path / "ratings.jsonl"
    write_lines(path, bad_file_lines())
    statuses = read_request_statuses(path)
    assert statuses == {"s0-0000000": "ok", "s0-0000006": "failed", "s0-0000007": "ok"}
    assert read_request_ids(path) == set(statuses)


def test_rate_script_resends_invalid_line(tmp_path, capsys):
    rate_main = load_script("rate").main
    path = tmp_path / "ratings.jsonl"
    options = ["--backend", "simulator", "--num", "4", "--out", str(path)]
    assert rate_main(options) == 0
    lines = path.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[1])
    del record["quality"]
    lines[1] = json.dumps(record)
    write_lines(path, lines)
    capsys.readouterr()

    assert rate_main(options) == 0
    output = capsys.readouterr().out
    assert "1 new ratings" in output
    assert "3 requests already present" in output
    dataset = load_ratings(path)
    assert sorted(dataset.request_ids) == [request_id(0, i) for i in range(4)]
    assert [bad.line_number for bad in dataset.bad_lines] == [2]
    assert "missing field(s) ['quality']" in dataset.bad_lines[0].reason


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--min-quality", "0.9", "min_quality = 0.0 in the file, 0.9 now"),
        ("--max-latency", "20", "max_latency_s = 60.0 in the file, 20.0 now"),
        ("--seed", "1", "seed = 0 in the file, 1 now"),
    ],
)
def test_rate_script_rejects_changed_settings(tmp_path, option, value, message):
    rate_main = load_script("rate").main
    path = tmp_path / "ratings.jsonl"
    options = ["--backend", "simulator", "--num", "5", "--out", str(path)]
    assert rate_main(options) == 0
    before = path.read_text(encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        rate_main([*options, option, value])
    assert path.read_text(encoding="utf-8") == before


def test_rate_script_rejects_other_backend(tmp_path):
    rate_main = load_script("rate").main
    path = tmp_path / "ratings.jsonl"
    assert rate_main(["--backend", "simulator", "--num", "2", "--out", str(path)]) == 0
    # The check runs before any request, so nothing listens on this address.
    openai = ["--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"]
    with pytest.raises(ValueError, match="backend = 'simulator' in the file, 'openai' now"):
        rate_main([*openai, "--num", "2", "--out", str(path)])
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2


def test_prepare_checks_records_without_settings(tmp_path):
    path = tmp_path / "ratings.jsonl"
    rater = SimulatorRater(seed=0)
    collect_ratings(rater, sample_requests(0, range(20), PROMPTS), path)
    assert not settings_path(path).exists()  # as written before settings files existed

    narrow = collection_settings(0, OutcomeRanges(min_quality=0.9), PROMPTS, rater)
    with pytest.raises(ValueError, match="outside this run's range min_quality = 0.9"):
        prepare_ratings_file(path, narrow)
    other_model = {**collection_settings(0, OutcomeRanges(), PROMPTS, rater), "model": "m"}
    with pytest.raises(ValueError, match="line 1 has model = 'analytic-persona-v1'"):
        prepare_ratings_file(path, other_model)
    other_seed = collection_settings(1, OutcomeRanges(), PROMPTS, rater)
    with pytest.raises(ValueError, match=r"line 1 has request_id = 's0-0000000'.*seed = 1"):
        prepare_ratings_file(path, other_seed)
    smaller_bank = collection_settings(0, OutcomeRanges(), PROMPTS[:1], rater)
    prompt_ids = [json.loads(line)["prompt_id"] for line in path.read_text().splitlines()]
    assert max(prompt_ids) >= 1  # so one prompt cannot cover the file
    with pytest.raises(ValueError, match=r"has prompt_id = \d+, but this run's prompt bank has 1"):
        prepare_ratings_file(path, smaller_bank)
    assert not settings_path(path).exists()

    same = collection_settings(0, OutcomeRanges(), PROMPTS, rater)
    assert len(prepare_ratings_file(path, same)) == 20
    assert json.loads(settings_path(path).read_text(encoding="utf-8")) == same


def test_prepare_rejects_garbled_settings_file(tmp_path):
    path = tmp_path / "ratings.jsonl"
    collect_ratings(SimulatorRater(), sample_requests(0, range(2), PROMPTS), path)
    settings_path(path).write_text("{oops", encoding="utf-8")
    settings = collection_settings(0, OutcomeRanges(), PROMPTS, SimulatorRater())
    with pytest.raises(ValueError, match="is not valid JSON") as error:
        prepare_ratings_file(path, settings)
    assert str(settings_path(path)) in str(error.value)


def test_rate_script_rejects_bad_out(tmp_path):
    rate_main = load_script("rate").main
    options = ["--backend", "simulator", "--num", "2", "--out"]
    with pytest.raises(ValueError, match="is a directory"):
        rate_main([*options, str(tmp_path)])
    plain_file = tmp_path / "file.txt"
    plain_file.write_text("keep me", encoding="utf-8")
    with pytest.raises(ValueError, match="file.txt is a file, not a directory"):
        rate_main([*options, str(plain_file / "ratings.jsonl")])
    assert plain_file.read_text(encoding="utf-8") == "keep me"
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["file.txt"]
    with pytest.raises(ValueError, match="ends in .settings.json"):
        rate_main([*options, str(tmp_path / "a.jsonl.settings.json")])
    with pytest.raises(ValueError, match=r"invalid --seed = -1"):
        rate_main([*options, str(tmp_path / "a.jsonl"), "--seed", "-1"])
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["file.txt"]


# Root may write into a chmod 0o500 directory, so the test uses procfs, which rejects new files
# for every user.
@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux procfs")
def test_rate_script_rejects_unwritable_out():
    rate_main = load_script("rate").main
    with pytest.raises(ValueError, match="cannot write ratings file /proc/ratings.jsonl"):
        rate_main(["--backend", "simulator", "--num", "2", "--out", "/proc/ratings.jsonl"])


def test_rate_script_cli_error_without_traceback(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "rate.py"
    command = [sys.executable, str(script), "--backend", "simulator", "--num", "2"]
    completed = subprocess.run(
        [*command, "--out", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 2
    assert "is a directory" in completed.stderr
    assert "Traceback" not in completed.stderr


@dataclasses.dataclass(frozen=True)
class FailingRater:
    """A simulator-named rater whose every request fails, as a server that is down would."""

    seed: int = 0
    backend: str = "simulator"
    model: str = SimulatorRater.model
    simulated: bool = True

    def rate(self, requests, on_result=None):
        results = []
        for request in requests:
            result = RatingResult(request=request, rating=None, error="connection refused")
            if on_result is not None:
                on_result(result)
            results.append(result)
        return results


def test_rate_script_retry_failed(tmp_path, capsys, monkeypatch):
    rate_script = load_script("rate")
    path = tmp_path / "ratings.jsonl"
    options = ["--backend", "simulator", "--num", "3", "--out", str(path)]
    real_build_rater = rate_script.build_rater

    monkeypatch.setattr(rate_script, "build_rater", lambda args: FailingRater(seed=args.seed))
    assert rate_script.main(options) == 1
    captured = capsys.readouterr()
    assert "0 new ratings, 3 new failures" in captured.out
    assert "all 3 requests failed" in captured.err

    monkeypatch.setattr(rate_script, "build_rater", real_build_rater)
    assert rate_script.main(options) == 0
    output = capsys.readouterr().out
    assert "0 new ratings, 0 new failures, 3 requests already present" in output
    assert "3 of them stored as failures (pass --retry-failed" in output

    assert rate_script.main([*options, "--retry-failed"]) == 0
    assert "3 new ratings, 0 new failures, 0 requests already present" in capsys.readouterr().out
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6  # the failed records are kept
    dataset = load_ratings(path, strict=True)
    assert dataset.num_ratings == 3
    assert dataset.num_failed == 0


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


def test_rate_script_resends_invalid_utf8(tmp_path, capsys):
    rate_main = load_script("rate").main
    path = tmp_path / "ratings.jsonl"
    options = ["--backend", "simulator", "--num", "3", "--out", str(path)]
    assert rate_main(options) == 0
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"timestamp": "', b'"timestamp": "\xff')
    path.write_bytes(b"".join(lines))
    assert request_id(0, 1) not in read_request_statuses(path)
    capsys.readouterr()

    assert rate_main(options) == 0
    assert "1 new ratings" in capsys.readouterr().out
    dataset = load_ratings(path)
    assert sorted(dataset.request_ids) == [request_id(0, i) for i in range(3)]
    assert [bad.reason for bad in dataset.bad_lines] == ["not valid UTF-8"]


@dataclasses.dataclass(frozen=True)
class InterruptedRater(FailingRater):
    """A simulator-named rater that rates one request and is then interrupted (Ctrl-C)."""

    def rate(self, requests, on_result=None):
        SimulatorRater(seed=self.seed).rate(requests[:1], on_result=on_result)
        raise KeyboardInterrupt


def test_rate_script_interrupt_prints_counts(tmp_path, capsys, monkeypatch):
    rate_script = load_script("rate")
    path = tmp_path / "ratings.jsonl"
    options = ["--backend", "simulator", "--num", "3", "--out", str(path)]
    real_build_rater = rate_script.build_rater
    monkeypatch.setattr(rate_script, "build_rater", lambda args: InterruptedRater(args.seed))
    assert rate_script.main(options) == 130
    error = capsys.readouterr().err
    assert "interrupted: 1 new ratings and 0 new failures were stored" in error
    assert "send the other 2 requests" in error

    monkeypatch.setattr(rate_script, "build_rater", real_build_rater)
    assert rate_script.main(options) == 0
    assert "2 new ratings" in capsys.readouterr().out
    assert sorted(load_ratings(path).request_ids) == [request_id(0, i) for i in range(3)]


def test_rate_script_rejects_file_in_use(tmp_path):
    rate_main = load_script("rate").main
    path = tmp_path / "ratings.jsonl"
    with lock_ratings_file(path):
        with pytest.raises(ValueError, match="ratings.jsonl is in use by another run"):
            rate_main(["--backend", "simulator", "--num", "2", "--out", str(path)])
    assert path.read_text(encoding="utf-8") == ""
    assert rate_main(["--backend", "simulator", "--num", "2", "--out", str(path)]) == 0


def test_stale_settings_are_replaced(tmp_path, capsys):
    rate_main = load_script("rate").main
    path = tmp_path / "ratings.jsonl"
    assert rate_main(["--backend", "simulator", "--num", "2", "--out", str(path)]) == 0
    path.unlink()
    options = ["--backend", "simulator", "--num", "2", "--out", str(path), "--seed", "1"]
    assert rate_main(options) == 0
    assert json.loads(settings_path(path).read_text(encoding="utf-8"))["seed"] == 1
    path.write_text("\n", encoding="utf-8")  # no valid record, as after emptying it by hand
    assert rate_main([*options[:-1], "2"]) == 0
    assert json.loads(settings_path(path).read_text(encoding="utf-8"))["seed"] == 2


@dataclasses.dataclass(frozen=True)
class LastRequestsInterruptedRater(FailingRater):
    """A simulator-named rater interrupted just after it has rated every request."""

    def rate(self, requests, on_result=None):
        SimulatorRater(seed=self.seed).rate(requests, on_result=on_result)
        raise KeyboardInterrupt


def test_rate_interrupt_after_last_request(tmp_path, capsys, monkeypatch):
    rate_script = load_script("rate")
    monkeypatch.setattr(rate_script, "build_rater", lambda args: LastRequestsInterruptedRater())
    path = tmp_path / "ratings.jsonl"
    assert rate_script.main(["--backend", "simulator", "--num", "3", "--out", str(path)]) == 0
    captured = capsys.readouterr()
    assert "3 new ratings" in captured.out
    assert "interrupted" not in captured.err


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="needs /dev/null")
def test_rate_script_rejects_device_out():
    rate_main = load_script("rate").main
    with pytest.raises(ValueError, match="/dev/null exists and is not a regular file"):
        rate_main(["--backend", "simulator", "--num", "2", "--out", "/dev/null"])
    assert not Path("/dev/null.settings.json").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--min-quality", "2"], r"0 <= --min-quality < --max-quality <= 1, got \[2\.0, 1\.0\]"),
        (["--max-latency", "0.1"], r"0 < --min-latency < --max-latency"),
        (["--temperature", "nan"], r"--temperature must be a finite number >= 0, got nan"),
        (["--timeout", "inf"], r"--timeout must be a finite number > 0, got inf"),
        (["--concurrency", "0"], r"--concurrency must be >= 1, got 0"),
    ],
)
def test_rate_script_errors_name_options(tmp_path, options, message):
    rate_main = load_script("rate").main
    openai = ["--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"]
    with pytest.raises(ValueError, match=message):
        rate_main([*openai, "--num", "2", "--out", str(tmp_path / "a.jsonl"), *options])
    assert list(tmp_path.iterdir()) == []


def test_rate_script_reports_full_disk(tmp_path, capsys, monkeypatch):
    rate_script = load_script("rate")

    def fail_to_append(rater, requests, out_path, on_result=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rate_script, "collect_ratings", fail_to_append)
    path = tmp_path / "ratings.jsonl"
    assert rate_script.main(["--backend", "simulator", "--num", "2", "--out", str(path)]) == 1
    error = capsys.readouterr().err
    assert f"could not append to {path}: No space left on device" in error
    assert "run the same command again" in error


@dataclasses.dataclass(frozen=True)
class UnparsableRater(FailingRater):
    """A simulator-named rater whose every reply arrives without a rating."""

    def rate(self, requests, on_result=None):
        results = []
        for request in requests:
            result = RatingResult(
                request=request,
                rating=None,
                raw_text="I would say it is fine",
                error=f"{UNPARSABLE_REPLY_PREFIX}no JSON object",
            )
            if on_result is not None:
                on_result(result)
            results.append(result)
        return results


def test_retry_failed_skips_unparsable_replies(tmp_path, capsys, monkeypatch):
    rate_script = load_script("rate")
    path = tmp_path / "ratings.jsonl"
    options = ["--backend", "simulator", "--num", "3", "--out", str(path)]
    real_build_rater = rate_script.build_rater

    monkeypatch.setattr(rate_script, "build_rater", lambda args: UnparsableRater(seed=args.seed))
    assert rate_script.main(options) == 1
    capsys.readouterr()
    assert set(read_request_statuses(path).values()) == {"unparsable"}

    monkeypatch.setattr(rate_script, "build_rater", real_build_rater)
    assert rate_script.main([*options, "--retry-failed"]) == 0
    output = capsys.readouterr().out
    assert "0 new ratings, 0 new failures, 3 requests already present" in output
    assert "3 of them stored as unparsable replies" in output

    assert rate_script.main([*options, "--retry-unparsable"]) == 0
    assert "3 new ratings, 0 new failures" in capsys.readouterr().out
    assert set(read_request_statuses(path).values()) == {"ok"}


def test_rate_help_gives_defaults(capsys):
    parse_args = load_script("rate").parse_args
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    # argparse wraps long help lines, so compare with the whitespace collapsed.
    help_text = " ".join(capsys.readouterr().out.split())
    ranges = OutcomeRanges()
    for option, default in [
        ("--seed SEED", 0),
        ("--api-key-env API_KEY_ENV", "OPENAI_API_KEY"),
        ("--concurrency CONCURRENCY", 4),
        ("--timeout TIMEOUT", 60.0),
        ("--max-retries MAX_RETRIES", 4),
        ("--temperature TEMPERATURE", 0.7),
        ("--max-tokens MAX_TOKENS", 32),
        ("--min-quality MIN_QUALITY", f"{ranges.min_quality:g}"),
        ("--max-quality MAX_QUALITY", f"{ranges.max_quality:g}"),
        ("--min-latency MIN_LATENCY", f"{ranges.min_latency_s:g}"),
        ("--max-latency MAX_LATENCY", f"{ranges.max_latency_s:g}"),
    ]:
        entry = help_text.split(f"{option} ")[-1].split(" --")[0]
        assert f"(default: {default})" in entry, (option, entry)
    assert "(default: json_object)" in help_text
