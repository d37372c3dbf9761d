"""A shard's final results file written while its parts commit, so the join at the end only
publishes it: the Parquet encoding (or the JSON Lines copy) overlaps the shard's requests
instead of following them, and no part is read back.

The parts stay the record of what is committed; the running file is a shortcut beside them.
When it cannot be the join's exact result it gives up and the shard's parts are joined as
before (``OutputLayout.commit_shard``): a shard that resumes (its first parts were committed by
an earlier attempt), Parquet parts whose schemas differ (``parquet_sink.join`` unifies them), a
failed write.
"""

from __future__ import annotations

import contextlib

import pyarrow as pa
import pyarrow.parquet as pq

from services.worker import fs, parquet_sink
from services.worker.manifests import OutputFormat

_FAILED = (OSError, pa.ArrowException)


class RunningJoin:
    def __init__(self, uri: str, output_format: OutputFormat, temp_dir: str):
        self._file = fs.AtomicFile(uri, temp_dir, arrow=output_format == "parquet")
        self._parquet = output_format == "parquet"
        self._writer: pq.ParquetWriter | None = None
        self.parts = 0  # appended so far
        self.given_up = False

    def add(self, results: bytes | pa.Table) -> None:
        """Append the next committed part's results, as the pipeline holds them
        (``PartResult.results``): JSON Lines content, or for Parquet output the part's table."""
        if self.given_up:
            return
        try:
            if self._parquet:
                assert isinstance(results, pa.Table)
                part = results
                if self._writer is None:
                    self._writer = parquet_sink.results_writer(self._file.file, part)
                elif not part.schema.equals(self._writer.schema):
                    self.give_up()
                    return
                self._writer.write_table(part)
            else:
                self._file.file.write(results)
        except _FAILED:
            self.give_up()
            return
        self.parts += 1

    def commit(self, parts: int) -> bool:
        """Publish the file as the shard's results if it holds its ``parts`` parts; False (and
        nothing published) if it gave up or holds other parts."""
        if self.given_up or self.parts != parts or (self._parquet and self._writer is None):
            self.give_up()  # no parts: the join writes the empty file
            return False
        try:
            if self._writer is not None:
                self._writer.close()
            self._file.commit()
        except _FAILED:
            self.give_up()
            return False
        return True

    def give_up(self) -> None:
        """Drop the running file (the shard's parts are joined instead)."""
        self.given_up = True
        if self._writer is not None:
            with contextlib.suppress(*_FAILED):
                self._writer.close()
            self._writer = None
        self._file.discard()
