"""`verify`: re-read every committed shard and check it against its fragment.

Per shard: each member's offset, size and sha256, the member and sample counts, the
whole tar's size and sha256. Per run: shards not committed, orphan tars (a tar with
no fragment) and fragments whose tar is missing. Every problem names its shard and,
where it can, the sample key and member. Warnings (errors with `strict`): stray files
under shards/ or manifest/ that are not exactly a shard's name, what dead writers left
(temp files, unfinished multipart uploads), and a complete run without _SUCCESS.json.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from manifests.errors import ManifestError
from manifests.keys import split_member
from manifests.reader import Run
from manifests.run_info import read_success
from manifests.schema import SCORE_COLUMNS
from manifests.scores import apply_scores, decode_scores
from manifests.storage import Storage

DEFAULT_WORKERS = 8


@dataclass(frozen=True)
class Problem:
    shard: int
    message: str
    member: str | None = None

    def __str__(self) -> str:
        where = f"shard {self.shard:06d}"
        if self.member:
            where += f" key {split_member(self.member)[0]} ({self.member})"
        return f"{where}: {self.message}"


@dataclass
class VerifyReport:
    run_uri: str
    total_shards: int | None
    committed: list[int]
    not_committed: list[int]
    orphan_tars: list[int]
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    members_checked: int = 0
    bytes_checked: int = 0

    def ok(self, allow_incomplete: bool = False, strict: bool = False) -> bool:
        complete = allow_incomplete or not self.not_committed
        return not self.problems and complete and not (strict and self.warnings)

    def failed_shards(self) -> list[int]:
        """Committed shards with a problem: what a repair makes again."""
        return sorted({p.shard for p in self.problems})


class _HashingReader:
    """Hashes and counts every byte the tar reader pulls through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.nbytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.sha256.update(data)
        self.nbytes += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


@dataclass
class _ShardResult:
    problems: list[Problem]
    members: int
    nbytes: int


def _check_shard(run: Run, shard: int, scored: bool) -> _ShardResult:
    try:
        fragment = run.fragment(shard)
    except ManifestError as e:
        return _ShardResult([Problem(shard, str(e))], 0, 0)
    score_problems = _check_scores(run, shard, fragment) if scored else []
    expected = fragment.expected_members()
    problems: list[Problem] = []
    seen: set[str] = set()
    if set(fragment.table.column("shard").to_pylist()) - {shard}:
        problems.append(Problem(shard, "manifest rows name another shard"))

    with run.storage.open_read(run.layout.shard_uri(shard)) as raw:
        reader = _HashingReader(raw)
        try:
            # Stream mode: one forward pass, no seeks, so S3 is read once.
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                for info in tar:
                    problems += _check_member(shard, tar, info, expected.get(info.name))
                    seen.add(info.name)
        except tarfile.TarError as e:
            problems.append(Problem(shard, f"tar unreadable: {e}"))
        reader.drain()

    missing = sorted(expected.keys() - seen, key=lambda name: expected[name].offset)
    if missing:
        # A bad header ends tar reading there: name the first lost member, count the rest.
        later = f" (nor are {len(missing) - 1} members after it)" if len(missing) > 1 else ""
        problems.append(Problem(shard, f"in the manifest but not read from the tar{later}", missing[0]))
    elif len({split_member(n)[0] for n in seen}) != fragment.info.samples:
        problems.append(Problem(shard, f"tar holds other than the manifest's {fragment.info.samples} samples"))
    tar_sha = reader.sha256.hexdigest()
    if not problems and (reader.nbytes != fragment.info.tar_nbytes or tar_sha != fragment.info.tar_sha256):
        problems.append(Problem(shard, "tar bytes differ from the manifest outside every member (a header or padding)"))
    return _ShardResult(problems + score_problems, len(seen), reader.nbytes)


def _check_scores(run: Run, shard: int, fragment) -> list[Problem]:
    """A score file must parse, cover exactly the shard's members, and hold finite numbers."""
    where = run.layout.scores_uri(shard)
    try:
        scores, _ = decode_scores(run.storage.get_bytes(where), where)
        apply_scores(fragment.table, scores, where)
    except ManifestError as e:
        return [Problem(shard, str(e))]
    for name in SCORE_COLUMNS:
        values = scores[name].drop_null().to_numpy(zero_copy_only=False)
        if not np.isfinite(values).all():
            return [Problem(shard, f"{where}: {name} holds values that are not finite numbers")]
    return []


def _check_member(shard: int, tar: tarfile.TarFile, info: tarfile.TarInfo, want) -> list[Problem]:
    if want is None:
        return [Problem(shard, "in the tar but not in the manifest", info.name)]
    if not info.isfile():
        return [Problem(shard, "is not a regular file", info.name)]
    data = tar.extractfile(info).read()
    got = (info.offset_data, len(data), hashlib.sha256(data).hexdigest())
    if got[2] != want.sha256:
        return [Problem(shard, f"sha256 mismatch (manifest {want.sha256[:12]}…, tar {got[2][:12]}…)", info.name)]
    if got[:2] != (want.offset, want.nbytes):
        return [Problem(shard, f"at offset {got[0]} size {got[1]}, manifest says {want.offset} size {want.nbytes}", info.name)]
    return []


def verify_run(
    run_uri: str,
    *,
    storage: Storage | None = None,
    workers: int = DEFAULT_WORKERS,
    on_progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Check a whole run; `on_progress(done, total)` follows the committed shards checked."""
    run = Run(run_uri, storage)
    listing = run.listing()
    total = run.info.total_shards
    planned = set(range(total)) if total is not None else set()
    report = VerifyReport(
        run_uri=run.uri,
        total_shards=total,
        committed=listing.committed,
        not_committed=sorted(planned - set(listing.committed) - set(listing.missing_tars)),
        orphan_tars=listing.orphan_tars,
    )
    report.problems += [Problem(i, "manifest fragment present but its tar is missing") for i in listing.missing_tars]
    report.warnings += [f"stray file, not a shard of this run's layout: {uri}" for uri in listing.strays]
    report.warnings += [f"left by a writer that died: {uri}" for uri in run.storage.leftovers(run.uri)]
    if total is not None and not report.not_committed and read_success(run.uri, run.storage) is None:
        report.warnings.append("every shard is committed but there is no _SUCCESS.json: resume the job to finish it")
    total_committed = len(listing.committed)
    with ThreadPoolExecutor(workers) as pool:
        checks = pool.map(lambda i: _check_shard(run, i, i in listing.scored), listing.committed)
        for done, result in enumerate(checks, 1):
            report.problems += result.problems
            report.members_checked += result.members
            report.bytes_checked += result.nbytes
            if on_progress:
                on_progress(done, total_committed)
    return report
