"""voc_jax/data/download.py, offline: a loopback HTTP server with Range support stands in for
the mirrors; checksums, resuming, mirror fallback, offline errors and atomic extraction."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
import time

import pytest

from voc_jax.data import download as D


def make_tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


TRAINVAL = make_tar(
    {
        "VOCdevkit/VOC2007/ImageSets/Main/trainval.txt": b"000005\n",
        "VOCdevkit/VOC2007/Annotations/000005.xml": b"<annotation/>",
        "VOCdevkit/VOC2007/JPEGImages/000005.jpg": b"\xff\xd8" + bytes(5000),
    }
)
TEST = make_tar({"VOCdevkit/VOC2007/ImageSets/Main/test.txt": b"000001\n"})


def archive(name: str, data: bytes) -> D.Archive:
    return D.Archive(name, hashlib.md5(data).hexdigest())


class Server:
    """Serves a dict of files on 127.0.0.1, honouring Range; records the requests."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = files, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                outer.requests.append((name, self.headers.get("Range")))
                data = outer.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].rstrip("-"))
                    self.send_response(206)
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/voc/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


DEAD = "http://127.0.0.1:9/"  # discard port: connection refused at once


def test_download_verify_and_extract(tmp_path):
    archives = [archive("trainval.tar", TRAINVAL), archive("test.tar", TEST)]
    with Server({"trainval.tar": TRAINVAL, "test.tar": TEST}) as server:
        root = D.download_voc2007(tmp_path, mirrors=[DEAD, server.url], archives=archives)
    assert root == tmp_path / "VOCdevkit" / "VOC2007"
    assert (root / "ImageSets/Main/trainval.txt").read_bytes() == b"000005\n"
    assert (root / "ImageSets/Main/test.txt").read_bytes() == b"000001\n"
    assert (tmp_path / "downloads" / "trainval.tar").read_bytes() == TRAINVAL
    assert not list((tmp_path / "downloads").glob("*.part"))
    # A second run finds the complete marker and touches nothing.
    again = D.download_voc2007(tmp_path, mirrors=[DEAD], archives=archives)
    assert again == root


def test_resume_from_partial_file(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "trainval.tar.part").write_bytes(TRAINVAL[:7000])
    with Server({"trainval.tar": TRAINVAL}) as server:
        path = D.ensure_archive(archive("trainval.tar", TRAINVAL), cache, [server.url])
    assert path.read_bytes() == TRAINVAL
    assert server.requests == [("trainval.tar", "bytes=7000-")]


def test_checksum_mismatch_moves_the_download_aside(tmp_path):
    """A download failing its MD5 is kept as <name>.bad-md5 (never deleted), and said so."""
    bad = D.Archive("trainval.tar", "0" * 32)
    with (
        Server({"trainval.tar": TRAINVAL}) as server,
        pytest.raises(D.ChecksumError, match=r"moved to .*trainval\.tar\.bad-md5"),
    ):
        D.ensure_archive(bad, tmp_path, [server.url])
    assert [p.name for p in tmp_path.iterdir()] == ["trainval.tar.bad-md5"]
    assert (tmp_path / "trainval.tar.bad-md5").read_bytes() == TRAINVAL


def test_corrupt_cached_archive_is_moved_aside_never_deleted(tmp_path, capsys):
    (tmp_path / "test.tar").write_bytes(b"garbage")
    with Server({"test.tar": TEST}) as server:
        path = D.ensure_archive(archive("test.tar", TEST), tmp_path, [server.url])
    assert path.read_bytes() == TEST
    assert (tmp_path / "test.tar.bad-md5").read_bytes() == b"garbage"
    err = capsys.readouterr().err
    assert "test.tar.bad-md5" in err and hashlib.md5(b"garbage").hexdigest() in err


def test_user_placed_archive_failing_md5_offline_is_kept_and_explained(tmp_path, capsys):
    cache = tmp_path / "downloads"
    cache.mkdir()
    placed = cache / "VOCtrainval_06-Nov-2007.tar"
    placed.write_bytes(b"a partial copy")
    code = D.main(["--out", str(tmp_path), "--mirror", DEAD])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    line = next(x for x in err.splitlines() if x.startswith("error:"))
    assert hashlib.md5(b"a partial copy").hexdigest() in line and D.VOC2007[0].md5 in line
    assert "moved it to" in line and "bad-md5" in line
    assert (cache / "VOCtrainval_06-Nov-2007.tar.bad-md5").read_bytes() == b"a partial copy"


def test_existing_devkit_contents_are_kept(tmp_path):
    """A VOCdevkit/ holding the user's VOC2012/ and other files: only VOC2007/ is added."""
    devkit = tmp_path / "VOCdevkit"
    (devkit / "VOC2012" / "JPEGImages").mkdir(parents=True)
    (devkit / "VOC2012" / "JPEGImages" / "x.jpg").write_bytes(b"mine")
    (devkit / "notes.txt").write_text("mine too")
    archives = [archive("trainval.tar", TRAINVAL), archive("test.tar", TEST)]
    with Server({"trainval.tar": TRAINVAL, "test.tar": TEST}) as server:
        root = D.download_voc2007(tmp_path, mirrors=[server.url], archives=archives)
    assert (root / "Annotations/000005.xml").exists()
    assert (devkit / "VOC2012" / "JPEGImages" / "x.jpg").read_bytes() == b"mine"
    assert (devkit / "notes.txt").read_text() == "mine too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VOCdevkit", "downloads"]


def test_a_voc2007_that_is_not_ours_is_refused_not_replaced(tmp_path, capsys):
    results = tmp_path / "VOCdevkit" / "VOC2007" / "results"
    results.mkdir(parents=True)
    (results / "comp1_cls_test_car.txt").write_text("000001 0.5\n")
    cache = tmp_path / "downloads"
    cache.mkdir()
    (cache / "trainval.tar").write_bytes(TRAINVAL)
    with pytest.raises(D.DownloadError, match="was not made by this downloader"):
        D.download_voc2007(tmp_path, mirrors=[DEAD], archives=[archive("trainval.tar", TRAINVAL)])
    assert (results / "comp1_cls_test_car.txt").read_text() == "000001 0.5\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VOCdevkit", "downloads"]


def test_offline_fails_at_once_saying_where_to_put_files(tmp_path, capsys):
    start = time.perf_counter()
    code = D.main(["--out", str(tmp_path), "--mirror", DEAD, "--mirror", DEAD + "x/"])
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err
    assert code == 2
    assert "could not download VOCtrainval_06-Nov-2007.tar (offline?)" in err
    assert str(tmp_path / "downloads" / "VOCtrainval_06-Nov-2007.tar") in err
    assert not (tmp_path / "VOCdevkit").exists()


def test_manually_placed_archives_are_used(tmp_path):
    cache = tmp_path / "downloads"
    cache.mkdir()
    (cache / "trainval.tar").write_bytes(TRAINVAL)
    root = D.download_voc2007(
        tmp_path, mirrors=[DEAD], archives=[archive("trainval.tar", TRAINVAL)]
    )
    assert (root / "Annotations/000005.xml").exists()


def test_failed_extraction_leaves_nothing(tmp_path):
    good = tmp_path / "good.tar"
    good.write_bytes(TRAINVAL)
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(TEST[:700])
    with pytest.raises(D.DownloadError, match="truncated.tar: cannot extract"):
        D.extract([good, truncated], tmp_path / "out")
    assert not (tmp_path / "out" / "VOCdevkit").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # no temporary left either


@pytest.mark.parametrize(
    "name", ["VOCdevkit/../../escape.txt", "/etc/evil.txt", "elsewhere/file.txt"]
)
def test_unsafe_members_are_refused(tmp_path, name):
    evil = tmp_path / "evil.tar"
    evil.write_bytes(make_tar({name: b"x"}))
    with pytest.raises((D.DownloadError, tarfile.TarError)):
        D.extract([evil], tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "out" / "VOCdevkit").exists()


def test_mirror_list_and_checksums_are_the_official_ones():
    assert [a.name for a in D.VOC2007] == ["VOCtrainval_06-Nov-2007.tar", "VOCtest_06-Nov-2007.tar"]
    assert all(len(a.md5) == 32 for a in D.VOC2007)
    assert any("host.robots.ox.ac.uk" in m for m in D.MIRRORS)
