"""roles/folders.py on this machine through pyinfra's local connector: a folder is sent once,
an unchanged one is no change, only what differs is sent again, and delete removes the rest."""

from __future__ import annotations

from pathlib import Path

from roles import folders

from tests.fixtures_local_deploy import run_locally


def ship(src: Path, dest: Path, delete: bool = False) -> int:
    changes, error = run_locally(
        lambda: folders.shipped(name="Ship", src=str(src), dest=str(dest), delete=delete)
    )
    assert error is None, error
    return changes


def test_a_folder_is_sent_once_and_then_only_what_differs(tmp_path: Path) -> None:
    src, dest = tmp_path / "wheels", tmp_path / "node" / "wheels"
    (src / "sub").mkdir(parents=True)
    (src / "a-1.0-py3-none-any.whl").write_bytes(b"a" * 5000)
    (src / "sub" / "b.txt").write_text("b\n")
    assert ship(src, dest) == 1
    assert (dest / "a-1.0-py3-none-any.whl").read_bytes() == b"a" * 5000
    assert (dest / "sub" / "b.txt").read_text() == "b\n"
    assert oct((dest / "sub" / "b.txt").stat().st_mode)[-3:] == "644"
    assert ship(src, dest) == 0, "an unchanged folder was sent again"

    # Same size, other bytes: told apart by digest, and only that file is sent.
    (dest / "a-1.0-py3-none-any.whl").write_bytes(b"x" * 5000)
    before = (dest / "sub" / "b.txt").stat().st_mtime_ns
    assert ship(src, dest) == 1
    assert (dest / "a-1.0-py3-none-any.whl").read_bytes() == b"a" * 5000
    assert (dest / "sub" / "b.txt").stat().st_mtime_ns == before


def test_delete_removes_files_the_source_lacks_and_keeps_them_otherwise(tmp_path: Path) -> None:
    src, dest = tmp_path / "wheels", tmp_path / "node"
    src.mkdir()
    (src / "kept.whl").write_text("k")
    dest.mkdir()
    (dest / "stale.whl").write_text("s")
    assert ship(src, dest) == 1
    assert (dest / "stale.whl").exists()
    assert ship(src, dest, delete=True) == 1
    assert not (dest / "stale.whl").exists() and (dest / "kept.whl").read_text() == "k"
    assert ship(src, dest, delete=True) == 0


def test_the_listing_reads_sha256sum_lines() -> None:
    digest = "0" * 64
    listing = f"{digest}  ./a.whl\n{digest}  ./sub/b c.txt\nnot a line\n"
    assert folders.parse_listing(listing) == {"a.whl": digest, "sub/b c.txt": digest}
