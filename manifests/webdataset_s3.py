"""Let plain `webdataset` read `s3://` shard URLs through `manifests.storage`.

webdataset has no S3 scheme of its own (docs/METHODS.md §7); the alternative,
`pipe:aws s3 cp ...`, shells out per shard. Registering a `gopen` handler gives it a
persistent boto3 stream with the same endpoint, credentials and retries the run was
written with.

    from manifests.webdataset_s3 import register_s3_gopen
    register_s3_gopen()
    webdataset.WebDataset(Run(uri).shard_uris(), shardshuffle=False)
"""

from __future__ import annotations

from typing import BinaryIO

from manifests.storage import storage_for


def _open_s3(url: str, mode: str = "rb", bufsize: int = 8192, **_: object) -> BinaryIO:
    if mode != "rb":
        raise ValueError(f"{url}: runs are written by the factory, not through webdataset (mode {mode!r})")
    return storage_for(url).open_read(url)


def register_s3_gopen() -> None:
    """Install the `s3` handler in webdataset's scheme table (imports webdataset, and so torch)."""
    import webdataset  # noqa: F401  (loads webdataset.gopen)
    from webdataset.gopen import gopen_schemes

    gopen_schemes["s3"] = _open_s3
