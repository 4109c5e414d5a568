"""Metric files of a run: JSONL and CSV rows keyed by environment step, optional TensorBoard.

Each row is flat: `env_step`, `kind` ("train" or "eval") and scalar metrics. Training rows
go to both files, evaluation rows to the JSONL only. The CSV header is the first row's
keys; a later row with new keys adds them to the JSONL only. On resume, `truncate_after`
drops rows written after the checkpoint being resumed from, so no step appears twice. The
TensorBoard event files are then written anew from the rows that remain.
"""

import csv
import io
import json
import logging
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rlli_jax.outputs import save_figure_atomic, write_text_atomic

logger = logging.getLogger(__name__)

JSONL_NAME = "metrics.jsonl"
CSV_NAME = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"


def _summary_writer(folder: Path):
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(folder))


def _json_value(value: Any) -> Any:
    # JSON has no NaN or infinity; write null so every reader accepts the file.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    """Append metric rows to `run_dir/metrics.jsonl` and `run_dir/metrics.csv`."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = False):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.run_dir / JSONL_NAME
        self.csv_path = self.run_dir / CSV_NAME
        self._csv_fields = _read_csv_header(self.csv_path)
        self._tensorboard = None
        self.tensorboard_dir = self.run_dir / TENSORBOARD_DIR
        if tensorboard:
            self._tensorboard = _summary_writer(self.tensorboard_dir)

    def write(self, row: Mapping[str, Any], step: int, prefix: str = "train") -> None:
        """Write one row of scalars, keyed by `step` (environment steps)."""
        row = {"env_step": int(step), "kind": prefix, **row}
        with self.jsonl_path.open("a") as stream:
            stream.write(json.dumps({k: _json_value(v) for k, v in row.items()}) + "\n")
            stream.flush()
        if prefix == "train":
            self._write_csv(row)
        if self._tensorboard is not None:
            self._add_scalars(row)
            self._tensorboard.flush()

    def _add_scalars(self, row: Mapping[str, Any]) -> None:
        """Add a row's scalars to TensorBoard as `kind/name` at its `env_step`."""
        for name, value in row.items():
            # Warm-up chunks have no losses yet (NaN or null): TensorBoard gets no point.
            if name != "env_step" and is_number(value) and math.isfinite(value):
                kind = row.get("kind", "train")
                self._tensorboard.add_scalar(f"{kind}/{name}", value, row["env_step"])

    def _write_csv(self, row: Mapping[str, Any]) -> None:
        if self._csv_fields is None:
            self._csv_fields = list(row)
            with self.csv_path.open("w", newline="") as stream:
                csv.writer(stream).writerow(self._csv_fields)
        with self.csv_path.open("a", newline="") as stream:
            writer = csv.DictWriter(stream, self._csv_fields, extrasaction="ignore")
            writer.writerow(dict(row))

    def truncate_after(self, step: int) -> None:
        """Drop rows with `env_step` > `step` from both files (and a torn last JSONL line).

        With TensorBoard on, the event files are written anew from the kept JSONL rows, since
        an event file cannot be truncated and a resumed run would log those steps twice.
        """
        kept, records = [], []
        if self.jsonl_path.exists():
            for line in _read_lines(self.jsonl_path):
                record = _parse_row(line)
                if record is None:
                    logger.warning(
                        "dropping an unreadable line of %s: %.80s", self.jsonl_path, line
                    )
                elif record["env_step"] <= step:
                    kept.append(line)
                    records.append(record)
            write_text_atomic(self.jsonl_path, "".join(line + "\n" for line in kept))
        if self._tensorboard is not None:
            self._tensorboard.close()
            for path in self.tensorboard_dir.glob("events.out.tfevents.*"):
                path.unlink()
            self._tensorboard = _summary_writer(self.tensorboard_dir)
            for record in records:
                self._add_scalars(record)
            self._tensorboard.flush()
        if self.csv_path.exists() and self._csv_fields is not None:
            with self.csv_path.open(newline="", encoding="utf-8", errors="replace") as stream:
                rows = [
                    row
                    for row in csv.DictReader(stream)
                    if row.get("env_step", "").isdigit() and int(row["env_step"]) <= step
                ]
            text = io.StringIO()
            writer = csv.DictWriter(text, self._csv_fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
            write_text_atomic(self.csv_path, text.getvalue())

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


def is_number(value: Any) -> bool:
    """Tell whether a metric value can be plotted: an int or a float, NaN included, not a bool.

    An int too large for a float is not: JSON integers may have any number of digits, and
    matplotlib and `math.isfinite` raise OverflowError on one.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, float) or abs(value) <= sys.float_info.max


def _read_csv_header(path: Path) -> list[str] | None:
    if not path.exists():
        return None
    with path.open(newline="", encoding="utf-8", errors="replace") as stream:
        header = next(csv.reader(stream), None)
    return header or None


def read_metrics(run_dir: str | Path, prefix: str | None = "train") -> list[dict[str, Any]]:
    """Read the JSONL rows of a run, skipping lines cut short by a kill.

    `prefix` selects rows by their `kind` field ("train" or "eval"); None returns all rows.
    """
    path = Path(run_dir) / JSONL_NAME
    if not path.exists():
        return []
    rows = []
    for line in _read_lines(path):
        record = _parse_row(line)
        if record is not None and (prefix is None or record.get("kind", "train") == prefix):
            rows.append(record)
    return rows


def unreadable_lines(run_dir: str | Path) -> list[int]:
    """Return the numbers of the non-blank lines of a run's JSONL that `read_metrics` skips."""
    path = Path(run_dir) / JSONL_NAME
    if not path.exists():
        return []
    lines = _read_lines(path)
    return [
        number
        for number, line in enumerate(lines, start=1)
        if line.strip() and _parse_row(line) is None
    ]


def _read_lines(path: Path) -> list[str]:
    """Return the lines of a JSONL file. Invalid UTF-8 bytes become U+FFFD, so the line that
    contains them fails to parse instead of the whole file."""
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def _parse_row(line: str) -> dict[str, Any] | None:
    """Return the row of one JSONL line, or None for a line cut short by a kill or damaged by
    hand (not an object, or without an integer `env_step`)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    step = record.get("env_step")
    if isinstance(step, bool) or not isinstance(step, int):
        return None
    return record


def run_labels(run_dirs: list[str | Path]) -> list[str]:
    """Return a legend label per run folder: the fewest trailing path parts that make them unique.

    Usually that is the folder name alone. Folders with the same name (a/seed0, b/seed0) get as
    many parent folders as needed. The same folder given twice gets the same label twice.
    """
    # abspath, not resolve: a symbolic link to a run is labelled by the name it was given.
    paths = [Path(os.path.abspath(run_dir)) for run_dir in run_dirs]
    distinct = len(set(paths))
    for count in range(1, max((len(path.parts) for path in paths), default=1) + 1):
        labels = [Path(*path.parts[-count:]).as_posix() for path in paths]
        if len(set(labels)) == distinct:
            return labels
    return [path.as_posix() for path in paths]


def plot_learning_curves(
    run_dirs: list[str | Path],
    path: str | Path,
    names: tuple[str, ...] = ("episode_return", "qoe", "critic_loss", "actor_loss"),
) -> None:
    """Draw training curves of one or more runs against environment steps into a PNG.

    Evaluation rows, where present, are drawn as markers on every panel whose metric they
    contain (such as qoe, reward and episode_return). The legend names each run as
    `run_labels` does.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), squeeze=False)
    axes = axes[0]  # [len(names)] even for one panel
    for run_dir, label in zip(run_dirs, run_labels(run_dirs), strict=True):
        train_rows = read_metrics(run_dir, "train")
        eval_rows = read_metrics(run_dir, "eval")
        for axis, name in zip(axes, names, strict=True):
            # A value that is not a number (null, or a line edited by hand) is left out.
            points = [(r["env_step"], r[name]) for r in train_rows if is_number(r.get(name))]
            if points:
                steps, values = zip(*points, strict=True)
                (line,) = axis.plot(steps, values, label=label)
                evaluated = [(r["env_step"], r[name]) for r in eval_rows if is_number(r.get(name))]
                if evaluated:
                    eval_steps, eval_values = zip(*evaluated, strict=True)
                    axis.plot(eval_steps, eval_values, "o", color=line.get_color())
            axis.set_title(name)
            axis.set_xlabel("environment steps")
    axes[0].legend(fontsize="small")
    figure.tight_layout()
    save_figure_atomic(figure, path, dpi=100)
    plt.close(figure)
