"""How a record (a JSON object, or a CSV or Parquet row as a dict) becomes its id, its model
input and the values kept beside its prediction, as ``RecordFields`` says.

The model input is ``input_field``'s value, or an object of ``input_columns``, or by default (as
ever) the record's ``input`` field if it has one, else the record without its id and kept
columns.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from services.errors import Code, RecordError, Stage
from services.worker.manifests import RecordFields

_ID_TYPES = (str, int)  # exactly: orjson gives no subclasses, and a bool is not an id


def _bad(code: Code, message: str) -> RecordError:
    return RecordError(Stage.PARSE, code, message)


class FieldReader:
    def __init__(self, fields: RecordFields, partition: dict[str, str] | None = None):
        self.id_field = fields.id_field
        self.input_field = fields.input_field
        self.input_columns = fields.input_columns
        self.keep_columns = fields.keep_columns
        self.partition = partition or {}
        self._left_out = {fields.id_field, *fields.keep_columns}

    @property
    def keeps(self) -> bool:
        return bool(self.keep_columns)

    def record_id(self, obj: dict[str, Any]) -> Any:
        if self.id_field not in obj or obj[self.id_field] is None:
            raise _bad(Code.MISSING_ID, f"record has no {self.id_field!r} field")
        record_id = obj[self.id_field]
        if not isinstance(record_id, _ID_TYPES) or isinstance(record_id, bool):
            raise _bad(Code.BAD_ID, f"{self.id_field!r} must be a string or an integer")
        return record_id

    def model_input(self, obj: dict[str, Any]) -> Any:
        if self.input_field is not None:
            if self.input_field not in obj:
                raise _bad(Code.MISSING_FIELD, f"record has no {self.input_field!r} field (input_field)")
            return obj[self.input_field]
        if self.input_columns is not None:
            missing = [c for c in self.input_columns if c not in obj]
            if missing:
                raise _bad(Code.MISSING_FIELD, f"record has no {missing[0]!r} field (input_columns)")
            return {c: obj[c] for c in self.input_columns}
        if "input" in obj:
            return obj["input"]
        return {k: v for k, v in obj.items() if k not in self._left_out}

    def kept(self, obj: dict[str, Any]) -> dict[str, Any]:
        return {k: obj[k] if k in obj else self.partition.get(k) for k in self.keep_columns}

    def split(self, obj: dict[str, Any]) -> tuple[Any, Any, dict[str, Any] | None]:
        """(id, model input, kept values or None) or ``RecordError``."""
        return self.record_id(obj), self.model_input(obj), self.kept(obj) if self.keep_columns else None

    def split_all(self, objs: list[Any]) -> tuple[list[Any], list[Any], list[Any] | None] | None:
        """``split`` of many records at once when every one is good (the usual case); None
        otherwise, and the caller goes record by record for each bad one's own error."""
        if not all(type(r) is dict for r in objs):
            return None
        id_field = self.id_field
        ids = [r.get(id_field) for r in objs]
        if not all(type(i) in _ID_TYPES for i in ids):
            return None
        try:
            if self.input_field is None and self.input_columns is None and not self.keep_columns:
                inputs = [r["input"] if "input" in r else self.model_input(r) for r in objs]
            else:
                inputs = [self.model_input(r) for r in objs]
        except RecordError:
            return None
        return ids, inputs, [self.kept(r) for r in objs] if self.keep_columns else None

    def split_table(self, table: pa.Table) -> tuple[list[Any], list[Any], list[Any] | None] | None:
        """``split_all`` of a table's rows (Parquet, CSV) column by column: pyarrow builds the
        values and the input objects in C, with no dict per row built here. None when a row needs
        its own error (a missing or null id, a missing input column): the caller goes row by row."""
        names = set(table.column_names)
        if self.id_field not in names:
            return None
        id_column = table.column(self.id_field)
        if id_column.null_count or not (
            pa.types.is_integer(id_column.type) or pa.types.is_string(id_column.type)
        ):
            return None
        if self.input_field is not None:
            if self.input_field not in names:
                return None
            inputs = table.column(self.input_field).to_pylist()
        elif self.input_columns is not None:
            if not names.issuperset(self.input_columns):
                return None
            inputs = table.select(self.input_columns).to_pylist()
        elif "input" in names:
            inputs = table.column("input").to_pylist()
        else:
            inputs = table.select([n for n in table.column_names if n not in self._left_out]).to_pylist()
        keeps = None
        if self.keep_columns:
            present = [c for c in self.keep_columns if c in names]
            keeps = table.select(present).to_pylist() if present else [{} for _ in range(table.num_rows)]
            if missing := [c for c in self.keep_columns if c not in names]:
                extra = {c: self.partition.get(c) for c in missing}
                for kept in keeps:
                    kept.update(extra)
            if present != self.keep_columns:  # the order asked for
                keeps = [{c: kept[c] for c in self.keep_columns} for kept in keeps]
        return id_column.to_pylist(), inputs, keeps
