"""Reading what a job leaves in its directory: its output, measured and packed, and its
progress file."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

from calctra_agent.runner.docker._output import output_size, pack
from calctra_agent.runner.docker._workdir import JobDir, read_progress


def test_pack_keeps_files_and_links_and_drops_special_files(tmp_path: Path) -> None:
    output = tmp_path / "output"
    (output / "sub").mkdir(parents=True)
    (output / "sub" / "data.csv").write_text("a,b\n")
    (output / "passwd").symlink_to("/etc/passwd")
    os.mkfifo(output / "pipe")

    archive = pack(output, tmp_path / "results" / "job_1.tar.gz")

    content = archive.path.read_bytes()
    assert (archive.size, archive.sha256) == (len(content), hashlib.sha256(content).hexdigest())
    with tarfile.open(archive.path) as tar:
        members = {member.name: member for member in tar.getmembers()}
        assert sorted(members) == ["passwd", "sub", "sub/data.csv"]
        assert members["passwd"].issym() and members["passwd"].linkname == "/etc/passwd"
        assert {(m.uid, m.gid, m.uname) for m in members.values()} == {(0, 0, "")}
        extracted = tar.extractfile("sub/data.csv")
        assert extracted is not None and extracted.read() == b"a,b\n"
    assert [path.name for path in archive.path.parent.iterdir()] == ["job_1.tar.gz"]


def test_output_size_counts_file_lengths_and_follows_no_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"x" * 10_000)
    output = tmp_path / "output"
    (output / "deep" / "er").mkdir(parents=True)
    (output / "deep" / "er" / "a").write_bytes(b"x" * 300)
    with open(output / "sparse", "wb") as sparse:
        sparse.truncate(5_000)
    (output / "link").symlink_to(outside)

    assert output_size(output) == 5_300
    assert output_size(output, stop_above=100) > 100


def test_progress_file_is_read_only_when_it_is_a_plain_file(tmp_path: Path) -> None:
    directory = JobDir(tmp_path)
    directory.status.mkdir()
    secret = tmp_path / "host-number"
    secret.write_text("77")

    directory.progress_file.symlink_to(secret)
    assert read_progress(directory) is None
    directory.progress_file.unlink()
    os.mkfifo(directory.progress_file)
    assert read_progress(directory) is None  # and does not wait for a writer
    directory.progress_file.unlink()
    directory.progress_file.write_text(" 42.7\n")
    assert read_progress(directory) == 42
    directory.progress_file.write_text("250")
    assert read_progress(directory) == 100
    directory.progress_file.write_text("nan")
    assert read_progress(directory) is None
