"""Identities described in words: the text that stands for a person in a prompt.

On the world base model a person's attribute words (`factory.world.captions`) draw
that person, so generation can name dataset identities by their words instead of by a
learned vector, and fine-tuning can start each identity's tokens from them (DiVE's
textual inversion, initialised where appearance already has a meaning). Words come
from a procedural world's annotations or from a JSON file of pid -> text (for real
data, e.g. written by a captioning model).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from factory.datasets.records import Record, Splits
from factory.errors import FactoryError
from factory.world.annotations import read_annotations


def describe_identities(source: str, splits: Splits, records: Mapping[int, Sequence[Record]]) -> dict[int, str]:
    """pid -> the words that describe it, for every pid of `records` (a split's images by pid).

    `source` "world": the attribute words the procedural world wrote for the pid's first
    image (by path); else a JSON file of pid -> text. A pid without text is an error.
    """
    if source == "world":
        rows = read_annotations(splits.root, "descriptions: world")
        words = {}
        for pid, own in records.items():
            first = min(r.path for r in own).relative_to(splits.root).as_posix()
            if "words" not in rows.get(first, {}):
                raise FactoryError(f"descriptions: world: {first} has no attribute words in "
                                   f"{splits.root}/world/annotations.jsonl (rendered by an older version?)")
            words[pid] = rows[first]["words"]
        return words
    path = Path(source).expanduser()
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        raise FactoryError(f"descriptions: {path} does not exist") from None
    except ValueError as e:
        raise FactoryError(f"descriptions: {path} is not valid JSON ({e})") from None
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise FactoryError(f"descriptions: {path} must be a JSON object of pid -> text")
    missing = [pid for pid in records if str(pid) not in table]
    if missing:
        raise FactoryError(f"descriptions: {path} has no text for pid {missing[0]} "
                           f"({len(missing)} pids missing)")
    return {pid: table[str(pid)] for pid in records}
