"""Checkpoints: round trip, fallback past a corrupt checkpoint, partial writes ignored."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from rlli_jax.checkpoint import (
    CHECKSUM_KEY,
    MAX_ERROR_CHARS,
    Checkpointer,
    _error_summary,
    state_checksum,
)
from rlli_jax.metrics import MetricsWriter, read_metrics, run_labels


def make_tree(offset: float):
    return {
        "params": {"w": jnp.arange(6.0).reshape(2, 3) + offset, "b": jnp.zeros(3) + offset},
        "step": jnp.asarray(int(offset), jnp.int32),
        "full": jnp.asarray(True),
    }


def save_two_and_damage_second(directory):
    """Save steps 1 and 2, then damage every data file of step 2, as a disk error would."""
    checkpointer = Checkpointer(directory)
    checkpointer.save(1, make_tree(1.0), {"chunk": 1})
    checkpointer.save(2, make_tree(2.0), {"chunk": 2})
    for path in (directory / "2" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    return checkpointer


def test_round_trip(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ckpt")
    checkpointer.save(3, make_tree(1.0), {"chunk": 3})
    restored = checkpointer.restore_latest(make_tree(0.0))
    assert restored.step == 3
    assert restored.metadata == {"chunk": 3}
    assert restored.skipped == ()
    np.testing.assert_array_equal(restored.state["params"]["w"], make_tree(1.0)["params"]["w"])
    assert int(restored.state["step"]) == 1


def test_no_checkpoint_returns_none(tmp_path):
    assert Checkpointer(tmp_path / "ckpt").restore_latest(make_tree(0.0)) is None


def test_keeps_newest(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ckpt", max_to_keep=2)
    for step in (1, 2, 3):
        checkpointer.save(step, make_tree(float(step)), {"chunk": step})
    assert checkpointer.all_steps() == [2, 3]


def test_corrupt_latest_falls_back_to_previous(tmp_path):
    checkpointer = save_two_and_damage_second(tmp_path / "ckpt")
    restored = checkpointer.restore_latest(make_tree(0.0))
    assert restored.step == 1
    assert [step for step, _ in restored.skipped] == [2]
    assert int(restored.state["step"]) == 1


def test_corrupt_step_is_moved_aside_and_saved_again(tmp_path):
    checkpointer = save_two_and_damage_second(tmp_path / "ckpt")
    assert checkpointer.restore_latest(make_tree(0.0)).step == 1
    # The damaged files are kept under another name, and step 2 can be written again.
    assert (tmp_path / "ckpt" / "corrupt-2").is_dir()
    assert checkpointer.all_steps() == [1]
    checkpointer.save(2, make_tree(5.0), {"chunk": 2})
    restored = checkpointer.restore_latest(make_tree(0.0))
    assert restored.step == 2
    assert int(restored.state["step"]) == 5


def test_all_corrupt_raises(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ckpt")
    checkpointer.save(1, make_tree(1.0), {"chunk": 1})
    for path in (tmp_path / "ckpt" / "1").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="no checkpoint .* could be restored"):
        checkpointer.restore_latest(make_tree(0.0))


def test_unfinished_write_is_ignored(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ckpt")
    checkpointer.save(1, make_tree(1.0), {"chunk": 1})
    # What a process killed during a save leaves behind: orbax's temporary directory.
    partial = tmp_path / "ckpt" / "2.orbax-checkpoint-tmp-12345"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "manifest.ocdbt").write_bytes(b"\x00" * 5)
    reopened = Checkpointer(tmp_path / "ckpt")
    assert reopened.all_steps() == [1]
    assert reopened.restore_latest(make_tree(0.0)).step == 1


def test_metrics_truncate_after_resume_point(tmp_path):
    writer = MetricsWriter(tmp_path)
    for step in (10, 20, 30):
        writer.write({"reward": float(step)}, step)
    writer.write({"qoe": 3.0}, 20, prefix="eval")
    with (tmp_path / "metrics.jsonl").open("a") as stream:
        stream.write('{"env_step": 40, "rew')  # a line cut short by a kill
    writer.truncate_after(20)
    assert [row["env_step"] for row in read_metrics(tmp_path)] == [10, 20]
    assert [row["env_step"] for row in read_metrics(tmp_path, "eval")] == [20]
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].split(",")[:3] == ["env_step", "kind", "reward"]
    assert len(csv_lines) == 3


def test_shape_mismatch_names_first_array(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ckpt")
    checkpointer.save(1, make_tree(1.0), {"chunk": 1})
    target = make_tree(0.0)
    target["params"]["w"] = jnp.zeros((3, 3))
    # A fresh manager, as a resumed run has: the shapes must be readable before any restore.
    with pytest.raises(ValueError, match=r"params/w is \(2, 3\) float32 in the checkpoint and "
                       r"\(3, 3\) float32 for this config"):  # fmt: skip
        Checkpointer(tmp_path / "ckpt").restore_latest(target)


def test_missing_array_is_a_mismatch(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ckpt")
    checkpointer.save(1, make_tree(1.0), {"chunk": 1})
    target = make_tree(0.0)
    target["extra"] = jnp.zeros(2)
    with pytest.raises(ValueError, match=r"array extra is absent in the checkpoint"):
        Checkpointer(tmp_path / "ckpt").restore_latest(target)


def test_rejected_metadata_falls_back(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ckpt")
    checkpointer.save(1, make_tree(1.0), {"chunk": 1})
    checkpointer.save(2, make_tree(2.0), {"foo": 1})

    def check(step, metadata):
        return None if metadata.get("chunk") == step else "metadata has no chunk"

    restored = checkpointer.restore_latest(make_tree(0.0), check)
    assert restored.step == 1
    assert restored.skipped == ((2, "metadata has no chunk"),)


def test_read_only_keeps_corrupt_step(tmp_path):
    save_two_and_damage_second(tmp_path / "ckpt")
    reader = Checkpointer(tmp_path / "ckpt", read_only=True)
    assert reader.restore_latest(make_tree(0.0)).step == 1
    assert sorted(path.name for path in (tmp_path / "ckpt").iterdir()) == ["1", "2"]
    with pytest.raises(ValueError, match="read-only"):
        reader.save(3, make_tree(3.0), {"chunk": 3})


def test_read_only_needs_existing_directory(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        Checkpointer(tmp_path / "absent", read_only=True)
    assert not (tmp_path / "absent").exists()


def test_metrics_truncate_drops_damaged_lines(tmp_path):
    writer = MetricsWriter(tmp_path)
    writer.write({"reward": 1.0}, 10)
    with (tmp_path / "metrics.jsonl").open("a") as stream:
        stream.write('42\n{"env_step": "20", "kind": "train"}\n[1, 2]\n')
    writer.write({"reward": 3.0}, 30)
    writer.truncate_after(30)
    assert [row["env_step"] for row in read_metrics(tmp_path)] == [10, 30]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_metrics_write_nan_as_null(tmp_path):
    writer = MetricsWriter(tmp_path)
    writer.write({"critic_loss": float("nan")}, 1)
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert record["critic_loss"] is None


def test_error_summary_drops_tensorstore_spec():
    error = ValueError(
        "Encountered error while reading array index: (slice(0, 32, 1),). "
        "See full TensorStore details: <TensorStore({\n  'base': {\n    'driver': 'zarr',"
    )
    summary = _error_summary(error)
    assert summary == (
        "ValueError: Encountered error while reading array index: (slice(0, 32, 1),)."
    )


def test_error_summary_keeps_later_lines_on_one_line():
    error = ValueError("pytree structure error: different types at key path\n    agent.step")
    assert _error_summary(error) == (
        "ValueError: pytree structure error: different types at key path agent.step"
    )


def test_error_summary_truncates_long_messages():
    summary = _error_summary(RuntimeError("x" * 1000))
    assert len(summary) == MAX_ERROR_CHARS
    assert summary.endswith("...")


def test_read_only_logs_no_orbax_warning(tmp_path, caplog):
    import orbax.checkpoint as ocp

    (tmp_path / "ckpt").mkdir()
    with caplog.at_level("WARNING"):
        Checkpointer(tmp_path / "ckpt", read_only=True)
    assert not [r for r in caplog.records if "read only" in r.getMessage()]
    # The filter is removed again: orbax's own warning still reaches the log.
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, max_to_keep=None)
    with caplog.at_level("WARNING"):
        ocp.CheckpointManager(tmp_path / "ckpt", options=options)
    assert [r for r in caplog.records if "read only" in r.getMessage()]


def _tensorboard_points(folder) -> list[tuple[str, int, float]]:
    """Read every scalar point of the TFRecord event files in `folder`."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    points = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4  # length, its CRC, the record and its CRC
            for value in event.summary.value:
                points.append((value.tag, event.step, round(value.simple_value, 4)))
    return sorted(points)


def test_truncate_rewrites_tensorboard_without_dropped_steps(tmp_path):
    writer = MetricsWriter(tmp_path, tensorboard=True)
    for step in (8, 16, 24):
        writer.write({"qoe": step / 8, "loss": float("nan")}, step)
    writer.write({"qoe": 9.0}, 24, prefix="eval")
    writer.close()

    resumed = MetricsWriter(tmp_path, tensorboard=True)
    resumed.truncate_after(16)
    resumed.write({"qoe": 5.0}, 24)
    resumed.close()
    points = _tensorboard_points(tmp_path / "tensorboard")
    assert points == [("train/qoe", 8, 1.0), ("train/qoe", 16, 2.0), ("train/qoe", 24, 5.0)]


def test_width_only_mismatch_names_x64(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ckpt")
    checkpointer.save(1, {"w": np.zeros((2, 3), np.float32)}, {"chunk": 1})
    target = {"w": np.zeros((2, 3), np.float64)}
    with pytest.raises(ValueError, match=r"float64 for this config \(is jax_enable_x64"):
        checkpointer.restore_latest(target)
    other_shape = {"w": np.zeros((4, 3), np.float64)}
    with pytest.raises(ValueError, match=r"was the run's config.yaml edited") as raised:
        checkpointer.restore_latest(other_shape)
    # A custom actor or environment re-registered with other sizes gives the same mismatch.
    assert "ACTOR_FACTORIES entry, or the environment passed with env=" in str(raised.value)


def test_changed_data_bits_fall_back(tmp_path):
    directory = tmp_path / "ckpt"
    tree = {"w": jnp.arange(20_000, dtype=jnp.float32), "n": jnp.arange(500, dtype=jnp.int32)}
    checkpointer = Checkpointer(directory)
    checkpointer.save(1, tree, {"chunk": 1})
    checkpointer.save(2, tree, {"chunk": 2})
    data_files = [path for path in (directory / "2" / "state").rglob("*") if path.is_file()]
    largest = max(data_files, key=lambda path: path.stat().st_size)
    original = largest.read_bytes()
    restored_changed = 0
    # Orbax checks no checksum on restore, so most flipped bits restore as other values.
    for position in range(len(original) // 10, len(original), len(original) // 10):
        damaged = bytearray(original)
        damaged[position] ^= 0x10
        largest.write_bytes(bytes(damaged))
        restored = Checkpointer(directory, read_only=True).restore_latest(tree)
        if restored.step == 2:
            for name in tree:
                np.testing.assert_array_equal(restored.state[name], tree[name])
        else:
            assert restored.step == 1
            assert "differ from the checksum saved with them" in restored.skipped[0][1]
            restored_changed += 1
    assert restored_changed > 0


def test_checksum_detects_each_bit_and_dtype():
    tree = {
        "f": jnp.linspace(-1.0, 1.0, 7),
        "i8": jnp.arange(5, dtype=jnp.int8),
        "u16": jnp.arange(4, dtype=jnp.uint16),
        "flag": jnp.array([True, False]),
        "key": jnp.arange(4, dtype=jnp.uint32),
    }
    reference = state_checksum(tree)
    assert len(reference) == 8
    assert state_checksum(dict(tree)) == reference
    for name, leaf in tree.items():
        values = np.asarray(leaf).copy()
        bits = values.view(np.uint8)
        for bit in range(8):
            changed = bits.copy()
            changed[-1] ^= 1 << bit
            if values.dtype == np.bool_ and changed[-1] > 1:
                continue  # a bool stores one bit
            mutated = {**tree, name: jnp.asarray(changed.view(values.dtype))}
            assert state_checksum(mutated) != reference, (name, bit)
    swapped = {**tree, "i8": tree["i8"][::-1]}
    assert state_checksum(swapped) != reference


def test_checkpoint_without_checksum_restores(tmp_path):
    import orbax.checkpoint as ocp

    checkpointer = Checkpointer(tmp_path / "ckpt")
    # What a save before checksums existed wrote: the metadata without CHECKSUM_KEY.
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(make_tree(1.0)), metadata=ocp.args.JsonSave({"chunk": 1})
    )
    checkpointer._manager.save(1, args=args, force=True)
    checkpointer._manager.wait_until_finished()
    restored = checkpointer.restore_latest(make_tree(0.0))
    assert restored.step == 1
    assert restored.metadata == {"chunk": 1}
    with pytest.raises(ValueError, match=f"metadata key '{CHECKSUM_KEY}' is reserved"):
        checkpointer.save(2, make_tree(2.0), {CHECKSUM_KEY: "x"})


def test_run_labels_separate_same_names(tmp_path):
    first = tmp_path / "sweep_a" / "seed0"
    second = tmp_path / "sweep_b" / "seed0"
    other = tmp_path / "sweep_b" / "seed1"
    assert run_labels([first, other]) == ["seed0", "seed1"]
    assert run_labels([first, second, other]) == ["sweep_a/seed0", "sweep_b/seed0", "sweep_b/seed1"]
    # The same folder twice, once through a relative path, keeps one label.
    relative = os.path.relpath(first)
    assert run_labels([first, relative]) == ["seed0", "seed0"]
    assert run_labels([]) == []
    assert run_labels(["/", "/"]) == ["/", "/"]


def test_run_labels_keep_the_given_link_name(tmp_path):
    (tmp_path / "runs" / "seed0").mkdir(parents=True)
    (tmp_path / "latest").symlink_to(tmp_path / "runs" / "seed0")
    assert run_labels([tmp_path / "latest"]) == ["latest"]
