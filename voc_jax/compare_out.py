"""compare's output directory: whose it is, and which earlier runs in it may be reused.

OUT belongs to ``voc-jax-compare`` when it holds the marker file ``.voc-jax-compare.json``
(written when compare makes OUT, or takes an empty directory); anything else is refused, so
that a user's files are never overwritten or removed. The marker records, per training run
compare made there, a fingerprint of everything that decides its result: the whole resolved
training config, a digest of the converted weights' files, a digest of the images and
annotations it trains and tests on, and (for the fine-tuned run) the fingerprint of the
frozen run whose head starts it. A run is reused (resumed, or re-evaluated when finished)
only when its fingerprint is unchanged; otherwise compare refuses, naming what changed,
before any work, unless ``--fresh`` asks for that run to be redone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from voc_jax.errors import ConfigError

MARKER = ".voc-jax-compare.json"
MADE_BY = "voc-jax-compare"
# Config fields replaced in a fingerprint by what they point at (paths move; content decides).
PATH_FIELDS = ("data.root", "init.weights", "init.head_from")


def _sha256_files(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def weights_digest(weights: Path) -> str:
    """A digest of every file of a converted-weights directory (params and metadata)."""
    files = sorted(p for p in Path(weights).rglob("*") if p.is_file())
    return _sha256_files(files)


def images_digest(records: Sequence[Any]) -> str:
    """A digest of the records, in order: ids, image files, boxes, labels, difficult flags."""
    h = hashlib.sha256()
    for r in records:
        h.update(r.image_id.encode() + b"\0")
        h.update(_sha256_files([Path(r.image_path)]).encode())
        for array in (r.boxes, r.labels, r.difficult):
            h.update(array.tobytes())
    return h.hexdigest()


def flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as {'a.b': value}, sequences as lists (JSON-plain)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat(value, name + "."))
        else:
            out[name] = json.loads(json.dumps(value, default=list))
    return out


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """What decides one training run's result (see the module's docstring)."""

    config: dict[str, Any]  # flat, without PATH_FIELDS
    weights: str
    images: str
    starts_from: str = ""  # the fingerprint digest of the run whose head starts this one

    @classmethod
    def of(cls, config: Mapping[str, Any], weights: str, images: str, starts_from: str = ""):
        values = {k: v for k, v in flat(config).items() if k not in PATH_FIELDS}
        return cls(values, weights, images, starts_from)

    @property
    def digest(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def changes_from(self, old: Mapping[str, Any]) -> list[str]:
        """What differs from an earlier fingerprint (as stored), in words."""
        changes = []
        before = old.get("config", {})
        for key in sorted(set(before) | set(self.config)):
            if before.get(key, "(absent)") != self.config.get(key, "(absent)"):
                now = self.config.get(key, "(absent)")
                changes.append(f"{key} {before.get(key, '(absent)')!r} -> {now!r}")
        if old.get("weights") != self.weights:
            changes.append("the weights (--weights)")
        if old.get("images") != self.images:
            changes.append("the images (--voc, --images)")
        if old.get("starts_from", "") != self.starts_from:
            changes.append("the frozen run its head starts from")
        return changes


class CompareOut:
    """OUT, owned by compare (its marker checked or written by ``claim``)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.marker = self.path / MARKER

    def check(self) -> None:
        """Refuse an OUT that is a file, or a non-empty directory compare did not make."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"--out {self.path}: is a file; name a new or empty directory")
        if self.path.is_dir() and not self.marker.is_file() and any(self.path.iterdir()):
            raise ConfigError(
                f"--out {self.path}: holds files that voc-jax-compare did not write (no "
                f"{MARKER}); name a new or empty directory, so that nothing of yours is "
                "overwritten or removed"
            )
        if self.marker.is_file():
            self._read()

    def _read(self) -> dict[str, Any]:
        try:
            state = json.loads(self.marker.read_text())
        except ValueError as e:
            raise ConfigError(f"{self.marker}: unreadable ({e}); name a new --out") from e
        if not isinstance(state, dict) or state.get("made_by") != MADE_BY:
            raise ConfigError(f"{self.marker}: not voc-jax-compare's marker; name a new --out")
        state.setdefault("runs", {})
        return state

    def claim(self) -> None:
        """Make OUT (or take an empty directory) and mark it compare's."""
        self.check()
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.marker.is_file():
            self._write({"made_by": MADE_BY, "runs": {}})

    def _write(self, state: dict[str, Any]) -> None:
        tmp = self.marker.with_name(self.marker.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.marker)

    def recorded(self, run: str) -> dict[str, Any] | None:
        """The fingerprint compare recorded for its run ``run`` (None: it made none there)."""
        if not self.marker.is_file():
            return None
        return self._read()["runs"].get(run)

    def check_reuse(
        self, run: str, fingerprint: Fingerprint, fresh: bool, trained: bool = True
    ) -> None:
        """Refuse to reuse ``OUT/run`` when what decides its result changed (without
        ``fresh``), or when it is there but compare did not make it. ``trained``: the run
        saved a checkpoint (one that stopped before its first has nothing to reuse)."""
        directory = self.path / run
        if not directory.exists():
            return
        old = self.recorded(run)
        if old is None:
            raise ConfigError(
                f"{directory}: exists but voc-jax-compare did not make it; move it away "
                "(compare removes only its own runs)"
            )
        if fresh or not trained:
            return
        changes = fingerprint.changes_from(old)
        if changes:
            shown = "; ".join(changes[:6]) + (
                f"; and {len(changes) - 6} more" if changes[6:] else ""
            )
            raise ConfigError(
                f"{directory}: the {run} run there was made with other settings ({shown}); "
                f"pass --fresh to redo it, or name another --out"
            )

    def record(self, run: str, fingerprint: Fingerprint) -> None:
        state = self._read()
        state["runs"][run] = dataclasses.asdict(fingerprint) | {"digest": fingerprint.digest}
        self._write(state)

    def remove_run(self, run: str) -> None:
        """Remove ``OUT/run`` and its record: only a run compare recorded as its own."""
        directory = self.path / run
        if self.recorded(run) is None:
            return
        shutil.rmtree(directory, ignore_errors=True)
        state = self._read()
        state["runs"].pop(run, None)
        self._write(state)

    def write_text(self, name: str, text: str) -> Path:
        """A file of compare's in OUT, written whole or not at all."""
        path = self.path / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        return path
