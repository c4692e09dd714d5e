"""Identity scores added to a run after the fact: one small Parquet file per shard beside its fragment.

```
RUN/scores/000000.parquet   member, identity_score, identity_margin (+ which model scored them)
```
A shard's fragment is never rewritten once committed, so `factory score` writes its
figures here, one file per shard, each stored atomically: a file present is a shard
scored, which is also what a resumed `factory score` skips. `Run` reads a score file
into the fragment's `identity_score` / `identity_margin` columns (schema 2.1), so
readers see one table whichever way a run was scored.
"""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from manifests.errors import ManifestError
from manifests.schema import SCHEMA, SCORE_COLUMNS

SCORES_SCHEMA = pa.schema([pa.field("member", pa.string(), nullable=False),
                           *(SCHEMA.field(name) for name in SCORE_COLUMNS)])
SCORER_KEY = b"manifests.scorer"


def encode_scores(table: pa.Table, scorer: dict) -> bytes:
    """A score file: one row per member of the shard; `scorer` says which model scored it."""
    table = table.select(SCORES_SCHEMA.names).cast(SCORES_SCHEMA)
    sink = io.BytesIO()
    pq.write_table(table.replace_schema_metadata({SCORER_KEY: json.dumps(scorer, sort_keys=True).encode()}), sink)
    return sink.getvalue()


def decode_scores(data: bytes, where: str) -> tuple[pa.Table, dict]:
    """(member, identity_score, identity_margin) rows and the scorer; `where` names the file in errors."""
    try:
        table = pq.read_table(io.BytesIO(data))
        scorer = json.loads((table.schema.metadata or {})[SCORER_KEY])
        return table.select(SCORES_SCHEMA.names).cast(SCORES_SCHEMA).replace_schema_metadata(None), scorer
    except (pa.ArrowInvalid, OSError, KeyError, ValueError) as e:
        raise ManifestError(f"{where}: not a readable score file ({type(e).__name__}: {e})") from None


def apply_scores(rows: pa.Table, scores: pa.Table, where: str) -> pa.Table:
    """`rows` (a fragment with `member`) with its score columns taken from `scores`, member by member."""
    if sorted(scores["member"].to_pylist()) != sorted(rows["member"].to_pylist()):
        raise ManifestError(f"{where}: its members are not the shard's ({scores.num_rows} scored, "
                            f"{rows.num_rows} in the fragment)")
    at = pc.index_in(rows["member"], value_set=scores["member"])
    for name in SCORE_COLUMNS:
        column = scores[name].take(at)
        if name in rows.column_names:
            rows = rows.set_column(rows.schema.get_field_index(name), SCHEMA.field(name), column)
        else:
            rows = rows.append_column(SCHEMA.field(name), column)
    return rows
