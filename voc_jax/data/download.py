"""Fetch PASCAL VOC 2007 (trainval + test) with checksums, resumable downloads and atomic,
safe extraction: ``python -m voc_jax.data.download --out data/``.

Downloads go to ``<cache>/<name>.part`` and resume with HTTP Range requests after an
interruption; a file becomes ``<cache>/<name>`` only once its MD5 matches. An archive already
in the cache that fails its MD5 (one a user put there by hand, say) is never deleted: it is
moved aside to ``<name>.bad-md5`` and the message gives both checksums. Extraction unpacks
every archive into a fresh temporary directory (tar's "data" filter: no absolute paths, no
links out, no devices) and, only when all are complete, moves its ``VOC2007/`` into
``<out>/VOCdevkit/``: whatever else the user keeps in ``VOCdevkit/`` (``VOC2012/``, results)
is never touched, and an existing ``VOC2007/`` that this downloader did not make is refused,
not replaced. Offline, it fails at once and says where to put the archives by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from voc_jax.atomic import free_name
from voc_jax.errors import UserError


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


class DownloadError(UserError):
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
        aside = free_name(dest.with_name(dest.name + ".bad-md5"))
        part.replace(aside)
        raise ChecksumError(
            f"{url}: MD5 {got} does not match the expected {md5}; the download was moved to "
            f"{aside} (nothing deleted); run again to download it afresh"
        )
    part.replace(dest)
    return dest


def ensure_archive(
    archive: Archive, cache: Path, mirrors: Sequence[str] = MIRRORS, *, timeout: float = 30.0
) -> Path:
    """The verified archive in ``cache``: reused if already there, else from the first mirror
    that works."""
    dest = cache / archive.name
    set_aside = ""
    if dest.exists():
        actual = md5_of(dest)
        if actual == archive.md5:
            return dest
        aside = free_name(dest.with_name(dest.name + ".bad-md5"))
        dest.replace(aside)
        set_aside = (
            f"{dest} has MD5 {actual}, not the expected {archive.md5}: moved it to {aside} "
            "(nothing deleted)"
        )
        print(f"warning: {set_aside}; downloading it again", file=sys.stderr)
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
        f"could not download {archive.name} (offline?). "
        + (f"{set_aside}. " if set_aside else "")
        + f"Download it on a machine with internet (MD5 {archive.md5}), put it at {dest} "
        "and run this again: it will be verified and extracted without downloading. Tried: "
        + "; ".join(failures)
    )


def extract(archives: Sequence[Path], out: Path) -> Path:
    """Unpack all archives and move the complete ``VOC2007/`` into ``out/VOCdevkit/`` (all or
    nothing; nothing else in ``out/VOCdevkit`` is touched). Returns ``out/VOCdevkit``."""
    devkit = out / "VOCdevkit"
    target = devkit / "VOC2007"
    if target.exists() and not _is_ours(target):
        raise DownloadError(
            f"{target} exists and was not made by this downloader (no {COMPLETE_MARKER}); "
            "move it away or choose another --out: it is never replaced"
        )
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".VOCdevkit.tmp-", dir=out))
    try:
        for path in archives:
            try:
                with tarfile.open(path) as tar:
                    members = tar.getmembers()
                    for member in tqdm(members, desc=f"extracting {path.name}", unit="file"):
                        tar.extract(member, tmp, filter=_strip_voc_root)
            except (tarfile.TarError, OSError) as e:
                raise DownloadError(f"{path}: cannot extract ({e}); delete it and run again") from e
        extracted = tmp / "VOC2007"
        if not extracted.is_dir():
            raise DownloadError(f"{', '.join(p.name for p in archives)}: hold no VOC2007/")
        (extracted / COMPLETE_MARKER).write_text(json.dumps([p.name for p in archives]) + "\n")
        devkit.mkdir(exist_ok=True)
        if target.exists():  # ours, from an earlier run: replaced only now, complete
            old = Path(tempfile.mkdtemp(prefix=".VOC2007.old-", dir=devkit))
            target.replace(old / "VOC2007")
            extracted.replace(target)
            shutil.rmtree(old)
        else:
            extracted.replace(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return devkit


def _is_ours(voc2007: Path) -> bool:
    return (voc2007 / COMPLETE_MARKER).exists() or (voc2007.parent / COMPLETE_MARKER).exists()


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
    for name, path in (("--out", out), ("--cache", cache)):
        if path is not None and path.exists() and not path.is_dir():
            raise DownloadError(f"{name} {path}: is a file, not a directory")
    final = out / "VOCdevkit"
    if _is_ours(final / "VOC2007") and (final / "VOC2007").is_dir():
        return final / "VOC2007"
    cache = cache or out / "downloads"
    paths = [ensure_archive(a, cache, mirrors, timeout=timeout) for a in archives]
    return extract(paths, out) / "VOC2007"


def main(argv: Sequence[str] | None = None) -> int:
    from voc_jax import cli

    parser = cli.ArgumentParser(prog="python -m voc_jax.data.download", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="where VOCdevkit/ is created")
    parser.add_argument("--cache", type=Path, help="where archives go (default OUT/downloads)")
    parser.add_argument(
        "--mirror",
        action="append",
        help="a base URL to try instead of the built-in mirrors (repeatable; replaces them)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per connection")

    def body(args: argparse.Namespace) -> int:
        root = download_voc2007(args.out, args.cache, args.mirror or MIRRORS, timeout=args.timeout)
        print(f"VOC 2007 ready at {root}; check it with: python -m voc_jax.data.check {root}")
        return 0

    return cli.argparse_command(argv, parser, body)


if __name__ == "__main__":
    sys.exit(main())
