"""How many records a shard reads into its next part.

The JSON way commits a part every ``checkpoint_every`` records. The Arrow way costs Serve per
request, not per row, and a part goes in one request when it fits, so its parts are larger
(``columnar_part_rows``), but never much over a request's bytes (``max_request_bytes``): a part
is held whole while its requests are out, so wide rows make smaller parts. A shard's first read
is the JSON way's size (or ``columnar_part_rows`` if smaller), which tells how wide the rows
are; when they fit, the rest of a whole part is read into the first (``ShardPipeline._read``).
"""

from __future__ import annotations

from services.worker.contracts import ShardInput
from services.worker.source import RawPart


class PartRows:
    def __init__(self, shard: ShardInput, columnar: bool):
        self._most = shard.columnar_part_rows if columnar else None
        self._least = min(shard.checkpoint_every, shard.columnar_part_rows)
        self._max_bytes = shard.max_request_bytes
        self.rows = self._least if columnar else shard.checkpoint_every

    def saw(self, part: RawPart) -> None:
        """Size the next part from one just read."""
        if self._most is None or not part.count:
            return
        fit = int(self._max_bytes * part.count / max(part.nbytes, 1))
        self.rows = max(self._least, min(self._most, fit))
