"""The output folder of a batch and the protocol that makes its results exactly-once.

    _plan.json                      the plan (before any shard runs)
    _parts/shard-NNNNN/part-PPPPP.{out.jsonl|out.arrow,err.jsonl,ckpt.jsonl}
                                    committed parts of unfinished shards; the checkpoint last
    shard-NNNNN.{jsonl|parquet}     a shard's results: its parts joined
    errors/shard-NNNNN.jsonl        its errors, written after the results: both there = whole
    _summary.json                   how the batch ended

Every name is fixed by a shard (and part) number and written atomically (``fs.atomic_writer``),
so a retry overwrites, never appends. Names are checked against the plan, never found by
listing, except to clear what an earlier batch left in the same folder.
"""

from __future__ import annotations

from services.constants import ERRORS_DIR, PARQUET_ERRORS_DIR, PARTS_DIR, PLAN_FILE, SHARD_NAME, SUMMARY_FILE
from services.worker import fs, parquet_sink
from services.worker.manifests import BatchSummary, Checkpoint, OutputFormat, Plan, ShardProgress
from services.worker.running_join import RunningJoin

_SHARD_GLOB = SHARD_NAME.replace("{shard:05d}", "*")
PART_KINDS = ("out", "err", "ckpt")
OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("jsonl", "parquet")
# A part's results: JSON lines as they will be in the final file; Parquet results as Arrow IPC,
# encoded as Parquet once, when the shard's parts are joined.
PART_RESULTS_EXT: dict[OutputFormat, str] = {"jsonl": "jsonl", "parquet": "arrow"}


class OutputLayout:
    def __init__(self, output_uri: str, output_format: OutputFormat = "jsonl"):
        self.uri = output_uri
        self.format = output_format

    # --- names -------------------------------------------------------------------------------

    def shard_uri(self, shard: int) -> str:
        return fs.join(self.uri, f"{SHARD_NAME.format(shard=shard)}.{self.format}")

    def errors_uri(self, shard: int | None = None) -> str:
        base = fs.join(self.uri, PARQUET_ERRORS_DIR if self.format == "parquet" else ERRORS_DIR)
        return base if shard is None else fs.join(base, f"{SHARD_NAME.format(shard=shard)}.jsonl")

    def parts_uri(self, shard: int | None = None) -> str:
        base = fs.join(self.uri, PARTS_DIR)
        return base if shard is None else fs.join(base, SHARD_NAME.format(shard=shard))

    def part_uri(self, shard: int, part: int, kind: str) -> str:
        assert kind in PART_KINDS, kind
        ext = PART_RESULTS_EXT[self.format] if kind == "out" else "jsonl"
        return fs.join(self.parts_uri(shard), f"part-{part:05d}.{kind}.{ext}")

    def _result_part_names(self, shard: int, part: int) -> tuple[str, ...]:
        """A part's results, current name first, then what earlier releases called it (a shard
        retried across an upgrade finds parts of both)."""
        legacy = fs.join(self.parts_uri(shard), f"part-{part:05d}.out.{self.format}")
        current = self.part_uri(shard, part, "out")
        return (current,) if legacy == current else (current, legacy)

    @property
    def plan_uri(self) -> str:
        return fs.join(self.uri, PLAN_FILE)

    @property
    def summary_uri(self) -> str:
        return fs.join(self.uri, SUMMARY_FILE)

    # --- the plan ----------------------------------------------------------------------------

    def start(self, plan: Plan) -> None:
        """Write the plan and drop the final shard files an earlier batch left in this folder:
        this batch writes its own, and one it does not finish must not show an earlier batch's
        results as its own. Raises ``OSError`` if the folder cannot be written."""
        fs.write_bytes(self.plan_uri, plan.model_dump_json(indent=2).encode() + b"\n")
        for fmt in OUTPUT_FORMATS:
            earlier = OutputLayout(self.uri, fmt)
            for final in fs.glob(self.uri, f"{_SHARD_GLOB}.{fmt}") + fs.glob(
                earlier.errors_uri(), f"{_SHARD_GLOB}.jsonl"
            ):
                fs.remove(final)

    def read_plan(self) -> Plan:
        return Plan.model_validate_json(fs.read_bytes(self.plan_uri))

    # --- parts of a running shard --------------------------------------------------------------

    def write_part(
        self, shard: int, part: int, results: bytes, errors: bytes, checkpoint: Checkpoint
    ) -> None:
        """A part's results, errors and checkpoint, the checkpoint last. No errors file for a
        part without errors (the join counts it empty), and none left from an earlier attempt
        at the same part."""
        fs.write_bytes(self.part_uri(shard, part, "out"), results)
        errors_uri = self.part_uri(shard, part, "err")
        if errors:
            fs.write_bytes(errors_uri, errors)
        else:
            fs.remove(errors_uri)
        fs.write_bytes(self.part_uri(shard, part, "ckpt"), checkpoint.model_dump_json().encode())

    def last_checkpoint(self, shard: int, plan_id: str, progress: ShardProgress) -> ShardProgress:
        """Follow the checkpoints of parts committed from ``progress`` on (only this batch's:
        the plan id tells them from an earlier batch's leftovers in the same folder). Heartbeats
        are throttled, so parts committed after the last one Temporal received may be here."""
        while fs.exists(uri := self.part_uri(shard, progress.part, "ckpt")):
            saved = Checkpoint.model_validate_json(fs.read_bytes(uri))
            if saved.plan_id != plan_id:
                break
            progress = saved.progress
        return progress

    def running_join(self, shard: int) -> RunningJoin | None:
        """The shard's results file, written as its parts commit (``running_join``), on a local
        disk (or a volume): its temp file in the shard's parts folder, so a worker killed
        meanwhile leaves it there, never beside the results. None on an object store, where
        the join streams the parts into one upload at the end: a running file there would be a
        local copy of the shard's results, and the worker's /tmp is small. ``OSError`` if it
        cannot be opened."""
        if not fs.is_local(self.uri):
            return None
        return RunningJoin(self.shard_uri(shard), self.format, self.parts_uri(shard))

    def commit_shard(self, shard: int, parts: int, running: RunningJoin | None = None) -> None:
        """Join the committed parts into the shard's final files, errors last, then drop the
        parts: if the worker dies after the join but before Temporal records the shard as done,
        the retry finds both final files and reports them (``final_counts``); if it dies during
        the join, the parts are still there to join again. The results file is ``running``'s
        when it holds all ``parts``."""
        if running is None or not running.commit(parts):
            self._join_results(shard, parts)
        fs.concat(
            self.errors_uri(shard), [self.part_uri(shard, p, "err") for p in range(parts)], missing_ok=True
        )
        fs.remove(self.parts_uri(shard), recursive=True)

    def _join_results(self, shard: int, parts: int) -> None:
        if self.format == "parquet":
            parquet_sink.join(
                self.shard_uri(shard), [self._result_part_names(shard, p) for p in range(parts)]
            )
        else:
            fs.concat(self.shard_uri(shard), [self.part_uri(shard, p, "out") for p in range(parts)])

    # --- finished shards -----------------------------------------------------------------------

    def final_counts(self, shard: int) -> tuple[int, int] | None:
        """(results, errors) of a shard whose final files are both written, else None: the
        errors file is written last, so both there means the shard is whole."""
        results, errors = self.shard_uri(shard), self.errors_uri(shard)
        if fs.exists(results) and fs.exists(errors):
            count = parquet_sink.count_rows if self.format == "parquet" else fs.count_lines
            return count(results), fs.count_lines(errors)
        return None

    def count_final(self, shards: list[int]) -> tuple[int, int]:
        """(results, errors) in the final files of those of ``shards`` that have both."""
        succeeded = failed = 0
        for shard in shards:
            if (counts := self.final_counts(shard)) is not None:
                succeeded, failed = succeeded + counts[0], failed + counts[1]
        return succeeded, failed

    # --- the end of the batch ----------------------------------------------------------------

    def finish(self, summary: BatchSummary) -> None:
        """Write the summary, then drop parts no shard needs: all of them once the batch
        completed; a cancelled or failed batch keeps those of unfinished shards (a later
        resume of the same shard numbers can use them)."""
        fs.write_bytes(self.summary_uri, summary.model_dump_json(indent=2).encode() + b"\n")
        if summary.status == "completed":
            fs.remove(self.parts_uri(), recursive=True)
            return
        for final in fs.glob(self.uri, f"{_SHARD_GLOB}.{self.format}"):
            name = final.rsplit("/", 1)[-1].removesuffix(f".{self.format}")
            if fs.exists(fs.join(self.errors_uri(), f"{name}.jsonl")):
                fs.remove(fs.join(self.parts_uri(), name), recursive=True)

    def read_summary(self) -> BatchSummary:
        return BatchSummary.model_validate_json(fs.read_bytes(self.summary_uri))

    def add_retry(self, retry_uri: str) -> None:
        """Point this batch's summary at a completed retry of its failed records (once)."""
        if not fs.exists(self.summary_uri):
            return
        summary = self.read_summary()
        if retry_uri not in summary.retries:
            updated = summary.model_copy(update={"retries": [*summary.retries, retry_uri]})
            fs.write_bytes(self.summary_uri, updated.model_dump_json(indent=2).encode() + b"\n")
