"""Write one stored object to stdout: `python -m manifests.cat s3://bucket/run/shards/000000.tar`.

What `Run.shard_uris(for_webdataset=True)` puts behind `pipe:` for S3 runs, so plain
`webdataset.WebDataset(urls)` reads them with the run's own endpoint, credentials and
retries, in any process and without registering anything.
"""

from __future__ import annotations

import shutil
import sys

from manifests.errors import FactoryError
from manifests.storage import storage_for


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m manifests.cat URI", file=sys.stderr)
        return 2
    try:
        with storage_for(args[0]).open_read(args[0]) as source:
            shutil.copyfileobj(source, sys.stdout.buffer, 1 << 20)
    except FactoryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
