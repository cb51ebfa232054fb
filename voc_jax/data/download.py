"""Fetch PASCAL VOC 2007 (trainval + test) with checksums, resumable downloads and atomic,
safe extraction: ``python -m voc_jax.data.download --out data/``.

Downloads go to ``<cache>/<name>.part`` and resume with HTTP Range requests after an
interruption; a file becomes ``<cache>/<name>`` only once its MD5 matches. Extraction unpacks
every archive into a temporary sibling directory (tar's "data" filter: no absolute paths, no
links out, no devices) which is renamed to ``<out>/VOCdevkit`` only when all are complete, so
an interrupted run never leaves a half-extracted dataset. Offline, it fails at once and says
where to put the archives by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from voc_jax.atomic import atomic_directory


@dataclasses.dataclass(frozen=True)
class Archive:
    name: str
    md5: str


VOC2007 = (
    Archive("VOCtrainval_06-Nov-2007.tar", "c52e279531787c972589f7e41ab4ae64"),
    Archive("VOCtest_06-Nov-2007.tar", "b6e924de25625d8de591ea690078ad9f"),
)
MIRRORS = (
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/",
    "https://pjreddie.com/media/files/",
)
COMPLETE_MARKER = ".voc-jax-complete"


class DownloadError(RuntimeError):
    """Nothing usable could be fetched; the message says what to do by hand."""


class ChecksumError(DownloadError):
    pass


def md5_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def fetch(url: str, dest: Path, md5: str, *, timeout: float = 30.0, progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` if present; verify the MD5."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        resumed = offset > 0 and response.status == 206
        if not resumed:
            offset = 0  # the server ignored the Range header: start again
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with (
            open(part, "ab" if resumed else "wb") as out,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=dest.name,
                disable=not progress,
            ) as bar,
        ):
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                bar.update(len(block))
    got = md5_of(part)
    if got != md5:
        part.unlink()
        raise ChecksumError(
            f"{url}: MD5 {got} does not match the expected {md5}; the partial file was removed, "
            "run again to download it afresh"
        )
    part.replace(dest)
    return dest


def ensure_archive(
    archive: Archive, cache: Path, mirrors: Sequence[str] = MIRRORS, *, timeout: float = 30.0
) -> Path:
    """The verified archive in ``cache``: reused if already there, else from the first mirror
    that works."""
    dest = cache / archive.name
    if dest.exists():
        if md5_of(dest) == archive.md5:
            return dest
        dest.unlink()  # a corrupt leftover: fetch again
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + archive.name
        try:
            return fetch(url, dest, archive.md5, timeout=timeout)
        except ChecksumError:
            raise
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            failures.append(f"{url}: {getattr(e, 'reason', e)}")
    raise DownloadError(
        f"could not download {archive.name} (offline?). Tried:\n  "
        + "\n  ".join(failures)
        + f"\nDownload it on a machine with internet (MD5 {archive.md5}), put it at {dest} "
        "and run this again: it will be verified and extracted without downloading."
    )


def extract(archives: Sequence[Path], out: Path) -> Path:
    """Unpack all archives into ``out/VOCdevkit`` atomically (all or nothing)."""
    final = out / "VOCdevkit"
    with atomic_directory(final, overwrite=True) as tmp:
        for path in archives:
            try:
                with tarfile.open(path) as tar:
                    members = tar.getmembers()
                    for member in tqdm(members, desc=f"extracting {path.name}", unit="file"):
                        tar.extract(member, tmp, filter=_strip_voc_root)
            except (tarfile.TarError, OSError) as e:
                raise DownloadError(f"{path}: cannot extract ({e}); delete it and run again") from e
        (tmp / COMPLETE_MARKER).write_text(json.dumps([p.name for p in archives]) + "\n")
    return final


def _strip_voc_root(member: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo | None:
    """VOC tars hold VOCdevkit/VOC2007/...: extract below VOCdevkit, safely ("data" filter)."""
    parts = Path(member.name).parts
    if not parts or parts[0] != "VOCdevkit":
        raise DownloadError(f"unexpected member {member.name!r}: not under VOCdevkit/")
    if len(parts) == 1:
        return None
    member = member.replace(name=str(Path(*parts[1:])), deep=False)
    return tarfile.data_filter(member, dest_path)


def download_voc2007(
    out: Path,
    cache: Path | None = None,
    mirrors: Sequence[str] = MIRRORS,
    archives: Sequence[Archive] = VOC2007,
    *,
    timeout: float = 30.0,
) -> Path:
    """Everything: ``out/VOCdevkit/VOC2007`` ready for ``voc_jax.data.check``."""
    final = out / "VOCdevkit"
    if (final / COMPLETE_MARKER).exists():
        return final / "VOC2007"
    cache = cache or out / "downloads"
    paths = [ensure_archive(a, cache, mirrors, timeout=timeout) for a in archives]
    return extract(paths, out) / "VOC2007"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voc_jax.data.download", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="where VOCdevkit/ is created")
    parser.add_argument("--cache", type=Path, help="where archives go (default OUT/downloads)")
    parser.add_argument("--mirror", action="append", help="a base URL to try (repeatable)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per connection")
    args = parser.parse_args(argv)
    try:
        root = download_voc2007(args.out, args.cache, args.mirror or MIRRORS, timeout=args.timeout)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"VOC 2007 ready at {root}; check it with: python -m voc_jax.data.check {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
