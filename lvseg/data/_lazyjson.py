"""Random access to the top-level values of a large JSON object without holding the parsed file in memory.

MeViS ships every mask of a split in one ``mask_dict.json`` (``{anno_id: [RLE or null per frame]}``), which is
gigabytes for ``train``. :class:`LazyJsonObject` scans the file once (memory-mapped, bracket depth tracked outside
strings) to record where each top-level value starts, and decodes a value only when it is asked for.
"""

from __future__ import annotations

import json
import mmap
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lvseg.errors import DatasetError

__all__ = ["LazyJsonObject"]

# A JSON string (with escapes) or a bracket; brackets inside strings are consumed by the string alternative.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]]', re.DOTALL)


class LazyJsonObject:
    """Read-only mapping ``key -> value`` over a JSON file whose top level is an object."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DatasetError(f"JSON file not found: '{self.path}'.")
        self._offsets: dict[str, tuple[int, int]] = {}
        with open(self.path, "rb") as fh:
            size = fh.seek(0, 2)
            if size == 0:
                raise DatasetError(f"'{self.path}' is empty; re-download it.")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                self._scan(mm, size)

    def _scan(self, mm: mmap.mmap, size: int) -> None:
        depth = 0
        starts: list[tuple[str, int]] = []
        for m in _TOKEN.finditer(mm):
            tok = m.group()
            c = tok[:1]
            if c == b'"':
                if depth == 1:
                    j = m.end()
                    while j < size and mm[j : j + 1] in (b" ", b"\t", b"\r", b"\n"):
                        j += 1
                    if j < size and mm[j : j + 1] == b":":  # a key of the top-level object
                        j += 1
                        while j < size and mm[j : j + 1] in (b" ", b"\t", b"\r", b"\n"):
                            j += 1
                        starts.append((json.loads(tok.decode("utf-8")), j))
            elif c in (b"{", b"["):
                if depth == 0 and c != b"{":
                    raise DatasetError(f"'{self.path}' is not a JSON object at the top level.")
                depth += 1
            else:
                depth -= 1
                if depth < 0:
                    raise DatasetError(f"'{self.path}' is not valid JSON (unbalanced brackets); re-download it.")
        if depth != 0:
            raise DatasetError(f"'{self.path}' is truncated (unbalanced brackets); re-download it.")
        for i, (key, start) in enumerate(starts):
            end = starts[i + 1][1] if i + 1 < len(starts) else size
            self._offsets[key] = (start, end)

    def __contains__(self, key: object) -> bool:
        return key in self._offsets

    def __len__(self) -> int:
        return len(self._offsets)

    def __iter__(self) -> Iterator[str]:
        return iter(self._offsets)

    def keys(self) -> list[str]:
        return list(self._offsets)

    def __getitem__(self, key: str) -> Any:
        try:
            start, end = self._offsets[key]
        except KeyError:
            raise KeyError(key) from None
        with open(self.path, "rb") as fh:
            fh.seek(start)
            chunk = fh.read(end - start).decode("utf-8")
        try:
            value, _ = json.JSONDecoder().raw_decode(chunk)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"'{self.path}': the value of {key!r} is not valid JSON ({exc}).") from exc
        return value
