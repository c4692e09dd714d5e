"""`run.json` (written first) and `_SUCCESS.json` (written last)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from manifests.errors import ManifestError, NotFound, RunNotFound
from manifests.layout import RunLayout
from manifests.schema import SCHEMA_VERSION
from manifests.storage import Storage, storage_for
from manifests.version import __version__


def spec_fingerprint(spec: dict[str, Any]) -> str:
    """sha256 of the resolved spec in canonical JSON: equal specs, equal fingerprints."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class RunInfo(BaseModel):
    # Newer writers may add fields; keep them rather than fail.
    model_config = ConfigDict(extra="allow")

    run_id: str
    spec: dict[str, Any]
    spec_fingerprint: str
    total_shards: int | None = Field(None, description="shards the job plans; None if open-ended")
    models: dict[str, str] = Field(default_factory=dict, description="role -> model fingerprint")
    code_version: str = __version__
    schema_version: str | int = SCHEMA_VERSION  # runs before 2.1 wrote an int
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))

    @classmethod
    def for_spec(cls, run_id: str, spec: dict[str, Any], **fields: Any) -> RunInfo:
        return cls(run_id=run_id, spec=spec, spec_fingerprint=spec_fingerprint(spec), **fields)


def write_run_info(run_uri: str, info: RunInfo, storage: Storage | None = None) -> None:
    layout = RunLayout(run_uri)
    storage = storage or storage_for(run_uri)
    storage.put_bytes(info.model_dump_json(indent=2).encode(), layout.run_json)


def read_run_info(run_uri: str, storage: Storage | None = None) -> RunInfo:
    layout = RunLayout(run_uri)
    storage = storage or storage_for(run_uri)
    try:
        raw = storage.get_bytes(layout.run_json)
    except NotFound as e:
        raise RunNotFound(f"no run at {layout.uri} ({e})") from None
    try:
        return RunInfo.model_validate_json(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ManifestError(f"{layout.run_json}: invalid run.json ({where}: {first['msg']})") from None


def write_success(run_uri: str, summary: dict[str, Any], storage: Storage | None = None) -> None:
    layout = RunLayout(run_uri)
    storage = storage or storage_for(run_uri)
    storage.put_bytes(json.dumps(summary, indent=2, sort_keys=True).encode(), layout.success_json)


def read_success(run_uri: str, storage: Storage | None = None) -> dict[str, Any] | None:
    """The run's closing summary, or None while the run is unfinished."""
    layout = RunLayout(run_uri)
    storage = storage or storage_for(run_uri)
    try:
        return json.loads(storage.get_bytes(layout.success_json))
    except NotFound:
        return None
