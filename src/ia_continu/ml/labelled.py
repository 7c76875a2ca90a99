"""Labelled rows from outside (POST /datasets, ``ia-continu datasets import``): parsing
and validation of CSV text and Parquet files, chunk by chunk.

Every rejected value is reported with its row and column: ``row`` counts data rows from
1 (the header is not a row), ``line`` is the line of a CSV file (the header is line 1).
Features must be finite numbers and the target 0 or 1.

CSV is read by pyarrow's C++ reader (4 to 9x faster than Python for 10,000 rows); when it
refuses the text or a value fails a check, the plain Python parser reads it again to name
the exact row, line and column. pyarrow is imported only when CSV or Parquet is read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

COLUMNS = ("feature1", "feature2", "target")
CSV_HEADER = ",".join(COLUMNS)

Chunk = tuple[NDArray[np.float64], NDArray[np.int64]]  # features (n, 2), target (n,)


class LabelledRowError(ValueError):
    """A value, a row or the header that cannot be stored; says where."""

    def __init__(
        self,
        message: str,
        *,
        row: int | None = None,
        column: str | None = None,
        line: int | None = None,
    ) -> None:
        self.message = message
        self.row = row
        self.column = column
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}" + (f" (line {self.line})" if self.line else ""))
        elif self.line is not None:
            where.append(f"line {self.line}")
        if self.column is not None:
            where.append(f"column {self.column}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


def check_csv_header(line: str, *, line_no: int = 1) -> None:
    names = [name.strip().strip('"').lower() for name in line.strip().lstrip("\ufeff").split(",")]
    if tuple(names) != COLUMNS:
        raise LabelledRowError(
            f"the header must be {CSV_HEADER!r}, got {line.strip()[:100]!r}", line=line_no
        )


def parse_csv_lines(lines: Iterable[str], *, first_row: int = 1, first_line: int = 2) -> Chunk:
    """Data lines (no header) -> arrays. Blank lines are skipped (but counted as lines)."""
    f1: list[float] = []
    f2: list[float] = []
    target: list[int] = []
    row = first_row
    for line_no, line in enumerate(lines, start=first_line):
        if not line.strip():
            continue
        parts = line.split(",")
        if len(parts) != 3:
            column = COLUMNS[len(parts)] if len(parts) < 3 else None
            raise LabelledRowError(
                f"expected 3 values ({CSV_HEADER}), got {len(parts)}",
                row=row,
                column=column,
                line=line_no,
            )
        f1.append(_feature(parts[0], row=row, line=line_no, column="feature1"))
        f2.append(_feature(parts[1], row=row, line=line_no, column="feature2"))
        target.append(_target(parts[2], row=row, line=line_no))
        row += 1
    features = np.empty((len(target), 2), dtype=np.float64)
    features[:, 0] = f1
    features[:, 1] = f2
    return features, np.asarray(target, dtype=np.int64)


def _feature(text: str, *, row: int, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LabelledRowError(
            f"not a number: {text.strip()[:40]!r}", row=row, column=column, line=line
        ) from None
    if not math.isfinite(value):
        raise LabelledRowError(
            f"must be a finite number, got {text.strip()[:40]!r}", row=row, column=column, line=line
        )
    return value


def _target(text: str, *, row: int, line: int) -> int:
    stripped = text.strip()
    if stripped == "0" or stripped == "1":
        return int(stripped)
    try:
        value = float(stripped)
    except ValueError:
        value = math.nan
    if value == 0.0 or value == 1.0:
        return int(value)
    raise LabelledRowError(
        f"must be 0 or 1, got {stripped[:40]!r}", row=row, column="target", line=line
    )


def parse_csv_bytes(raw: bytes) -> Chunk:
    """A whole CSV document with its header (the API's text/csv body), UTF-8."""
    import pyarrow as pa

    try:
        table = _arrow_csv().read_csv(pa.py_buffer(raw), **_arrow_csv_options())
        if tuple(table.column_names) == COLUMNS:
            return validate_arrays(
                *(table.column(name).to_numpy().astype(np.float64) for name in COLUMNS)
            )
    except (pa.ArrowException, LabelledRowError):
        pass  # the Python parser below says where
    return parse_csv_text(raw.decode("utf-8"))


def _arrow_csv() -> Any:
    import pyarrow.csv

    return pyarrow.csv


def _arrow_csv_options(block_size: int | None = None) -> dict[str, Any]:
    import pyarrow as pa

    csv = _arrow_csv()
    read = csv.ReadOptions(use_threads=False)
    if block_size is not None:
        read = csv.ReadOptions(use_threads=False, block_size=block_size)
    return {
        "read_options": read,
        "convert_options": csv.ConvertOptions(
            column_types=dict.fromkeys(COLUMNS, pa.float64()),
            include_columns=list(COLUMNS),
            include_missing_columns=False,
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
            null_values=[],
        ),
    }


def parse_csv_text(text: str) -> Chunk:
    """A whole CSV document with its header, parsed in Python (exact error locations)."""
    lines = text.splitlines()
    if not lines:
        raise LabelledRowError(f"empty CSV: the header {CSV_HEADER!r} is missing", line=1)
    check_csv_header(lines[0])
    return parse_csv_lines(lines[1:])


def iter_csv_file(path: Path, *, chunk_size: int) -> Iterator[Chunk]:
    """A CSV file of any size in chunks of about ``chunk_size`` rows (bounded memory):
    pyarrow's streaming reader, and the Python parser to locate an error exactly."""
    import pyarrow as pa

    with path.open(encoding="utf-8", newline="") as handle:
        check_csv_header(handle.readline())
    row = 1
    try:
        reader = _arrow_csv().open_csv(
            str(path), **_arrow_csv_options(block_size=max(chunk_size * 48, 1 << 16))
        )
        if tuple(reader.schema.names) != COLUMNS:
            raise LabelledRowError(f"the columns must be {CSV_HEADER!r}", line=1)
        for batch in reader:
            if batch.num_rows == 0:
                continue
            yield validate_arrays(
                *(batch.column(name).to_numpy().astype(np.float64) for name in COLUMNS),
                first_row=row,
            )
            row += batch.num_rows
    except (pa.ArrowException, LabelledRowError) as exc:
        for _ in iter_csv_file_python(path, chunk_size=chunk_size):
            pass  # raises with the row, line and column
        raise LabelledRowError(str(exc)) from None


def iter_csv_file_python(path: Path, *, chunk_size: int) -> Iterator[Chunk]:
    """The same, line by line in Python (slower; exact row, line and column)."""
    with path.open(encoding="utf-8", newline="") as handle:
        header = handle.readline()
        if not header:
            raise LabelledRowError(f"empty CSV: the header {CSV_HEADER!r} is missing", line=1)
        check_csv_header(header)
        row, line_no = 1, 2
        while True:
            lines = _take(handle, chunk_size)
            if not lines:
                return
            chunk = parse_csv_lines(lines, first_row=row, first_line=line_no)
            row += len(chunk[1])
            line_no += len(lines)
            if len(chunk[1]):
                yield chunk


def _take(handle: Iterable[str], n: int) -> list[str]:
    lines: list[str] = []
    for line in handle:
        lines.append(line)
        if len(lines) >= n:
            break
    return lines


def count_parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def iter_parquet_file(path: Path, *, chunk_size: int) -> Iterator[Chunk]:
    """A Parquet file with numeric columns feature1, feature2, target, batch by batch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    for name in COLUMNS:
        if name not in schema.names:
            raise LabelledRowError(f"missing column (the file has {schema.names})", column=name)
        kind = schema.field(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            raise LabelledRowError(f"must be numeric, the file stores {kind}", column=name)
    row = 1
    for batch in parquet.iter_batches(batch_size=chunk_size, columns=list(COLUMNS)):
        arrays = {}
        for name in COLUMNS:
            column = batch.column(name)
            if column.null_count:
                first = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
                raise LabelledRowError("missing value (null)", row=row + first, column=name)
            arrays[name] = column.to_numpy(zero_copy_only=False).astype(np.float64)
        yield validate_arrays(
            arrays["feature1"], arrays["feature2"], arrays["target"], first_row=row
        )
        row += batch.num_rows


def validate_arrays(
    feature1: NDArray[np.float64],
    feature2: NDArray[np.float64],
    target: NDArray[np.float64],
    *,
    first_row: int = 1,
) -> Chunk:
    """Vectorised checks (finite features, target 0 or 1), naming the first bad value."""
    for name, values in (("feature1", feature1), ("feature2", feature2)):
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise LabelledRowError(
                f"must be a finite number, got {values[bad[0]]}",
                row=first_row + int(bad[0]),
                column=name,
            )
    bad = np.flatnonzero((target != 0) & (target != 1))
    if bad.size:
        raise LabelledRowError(
            f"must be 0 or 1, got {target[bad[0]]}", row=first_row + int(bad[0]), column="target"
        )
    features = np.empty((feature1.shape[0], 2), dtype=np.float64)
    features[:, 0] = feature1
    features[:, 1] = feature2
    return features, target.astype(np.int64)
