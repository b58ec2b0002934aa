"""Score a CSV or Parquet file into another, chunk by chunk, never leaving half an output behind.

Memory is bounded by the chunk: the input is streamed (Parquet row batches; CSV blocks, every field read as
text so that a value's type never depends on the block it falls in) and the output is appended as it is
scored. The output goes to a hidden temporary file beside the target and is renamed over it only when every
row is scored: a bad row, a kill or a full disk leaves no output file (and an older one untouched).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from m3oe_lightning.data.encoders import Encoders
from m3oe_lightning.data.textio import RowLocator, require_table_columns, table_columns, table_format
from m3oe_lightning.errors import UserInputError

if TYPE_CHECKING:
    from m3oe_lightning.serving.scorer import Scorer


@dataclass
class FileScore:
    """What scoring a file did: rows, unseen ids per column, and (with ``evaluate``) the metrics."""

    rows: int = 0
    unseen: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def _chunks(path: Path, columns: list[str], chunk_rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet

    try:
        if table_format(path) == "parquet":
            for batch in pa.parquet.ParquetFile(path).iter_batches(batch_size=chunk_rows, columns=columns):
                yield batch.to_pandas()
            return
        reader = pa.csv.open_csv(
            path,
            read_options=pa.csv.ReadOptions(block_size=max(1 << 20, chunk_rows * 64)),
            parse_options=pa.csv.ParseOptions(newlines_in_values=True),
            convert_options=pa.csv.ConvertOptions(include_columns=columns,
                                                  column_types={c: pa.string() for c in columns},
                                                  null_values=[""], strings_can_be_null=True),
        )
        for batch in reader:  # a block holds about chunk_rows rows; cut it so that no chunk holds more
            for start in range(0, batch.num_rows, chunk_rows):
                yield batch.slice(start, chunk_rows).to_pandas()
    except (pa.ArrowException, OSError, UnicodeDecodeError) as error:
        raise UserInputError(f"{path}: cannot read it ({error})") from None


class _TableWriter:
    """Appends frames to a CSV or Parquet file (the format from the name)."""

    def __init__(self, path: Path, kind: str) -> None:
        self.path, self.kind, self.writer = path, kind, None

    def write(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.csv
        import pyarrow.parquet

        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self.writer is None:
            self.writer = (pa.parquet.ParquetWriter(self.path, table.schema) if self.kind == "parquet"
                           else pa.csv.CSVWriter(self.path, table.schema))
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def check_files(encoders: Encoders, source: Path, target: Path, *, evaluate: bool = False) -> list[str]:
    """Everything about the two files that can be refused before a row is read (cheap: no network is
    loaded yet): they exist and have known formats, the input's columns are what the model reads, the labels
    are there when evaluating. Returns the input's columns."""
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise UserInputError(f"input={source}: no such file")
    table_format(target)
    columns = table_columns(source)
    encoders.check_columns(columns, f"{source}{', line 1' if table_format(source) == 'csv' else ''}")
    if evaluate:
        for task in encoders.tasks:
            sources = encoders.label_sources(task)
            if not set(sources) & set(columns):
                require_table_columns(source, {sources[-1]: f"--evaluate (the labels of {task})"})
    if not target.parent.is_dir():
        raise UserInputError(f"output={target}: folder {target.parent} does not exist")
    return columns


def score_file(scorer: Scorer, source: Path, target: Path, *, chunk_rows: int = 65_536,
               evaluate: bool = False) -> FileScore:
    """Score every row of ``source`` into ``target`` (rows in input order); see the module docstring."""
    source, target = Path(source), Path(target)
    columns = check_files(scorer.encoders, source, target, evaluate=evaluate)
    kind, tasks = table_format(target), scorer.encoders.tasks
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    locator = RowLocator(source, table_format(source))
    if evaluate:
        from m3oe_lightning.training.metrics import DomainTaskMetrics  # torchmetrics: only when evaluating

    metrics = DomainTaskMetrics(scorer.encoders.schema.domains, tasks) if evaluate else None
    result = FileScore(unseen={v.column: 0 for v in scorer.encoders.sparse})
    writer = _TableWriter(partial, kind)
    try:
        for frame in _chunks(source, columns, chunk_rows):
            offset = result.rows
            scored = scorer.score(frame, lambda row, offset=offset: locator.where(offset + row), source=str(source))
            if metrics is not None:
                labels = scored.batch["labels"]
                missing = labels.isnan().any(dim=1).nonzero()
                if missing.numel():
                    raise UserInputError(f"{locator.where(offset + int(missing[0]))}: a label is empty "
                                         f"(--evaluate needs {', '.join(tasks)} on every row)")
                metrics.update(scored.logits, labels, scored.batch["domain"])
            writer.write(scored.frame)
            result.rows += len(frame)
            for column, count in scored.unseen.items():
                result.unseen[column] = result.unseen.get(column, 0) + count
        if result.rows == 0:
            raise UserInputError(f"{source} has no rows")
        writer.close()
        os.replace(partial, target)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    if metrics is not None:
        result.metrics = {name: float(value) for name, value in metrics.compute().items()}
    return result
