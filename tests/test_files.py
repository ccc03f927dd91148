"""Atomic writes finished in the background: in order, complete after wait(), errors not lost."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from traincraft import files


def test_the_last_of_many_writes_wins_and_no_temporary_file_is_left(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    for i in range(40):
        files.atomic_write_text(target, f"version {i}", background=True)
    files.wait()
    assert target.read_text() == "version 39"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.txt"]


def test_then_runs_after_the_file_is_in_place_in_write_order(tmp_path):
    seen = []
    for name in ("a", "b", "c"):
        path = tmp_path / name
        files.atomic_write(path, lambda h, n=name: h.write(n.encode()), background=True,
                           then=lambda p=path: seen.append((p.name, p.read_text())))
    files.wait()
    assert seen == [("a", "a"), ("b", "b"), ("c", "c")]


def test_a_failing_write_leaves_the_old_file_and_raises_at_once(tmp_path):
    target = tmp_path / "f.txt"
    files.atomic_write_text(target, "old")

    def broken(handle):
        handle.write(b"half")
        raise ValueError("serialisation failed")

    with pytest.raises(ValueError, match="serialisation failed"):
        files.atomic_write(target, broken)
    files.wait()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_an_error_of_the_background_work_is_raised_by_the_next_call(tmp_path, monkeypatch):
    real_replace = os.replace

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    files.atomic_write_text(tmp_path / "f.txt", "data", background=True)
    with pytest.raises(files.RunFilesError, match=r"cannot write .*f.txt: No space left on device; .* free, "
                       r"the file needs 4 bytes\. Its previous version is intact"):
        files.wait()
    monkeypatch.setattr(os, "replace", real_replace)
    assert not (tmp_path / "f.txt").exists() and list(tmp_path.iterdir()) == []
    files.atomic_write_text(tmp_path / "f.txt", "data")  # the error was reported once
    files.wait()
    assert (tmp_path / "f.txt").read_text() == "data"


def test_a_plain_write_comes_after_pending_background_ones(tmp_path):
    target = tmp_path / "f.txt"
    for i in range(20):
        files.atomic_write_text(target, f"background {i}", background=True)
    files.atomic_write_text(target, "plain")  # in place on return, never overwritten later
    assert target.read_text() == "plain"
    files.wait()
    assert target.read_text() == "plain"


@pytest.mark.parametrize("spill", [False, True])
def test_a_background_write_is_whole_in_memory_or_spilled_and_a_failed_one_leaves_nothing(
    tmp_path, monkeypatch, spill
):
    # Past SPILL_BYTES the bytes go to the temporary file on the caller's thread.
    monkeypatch.setattr(files, "SPILL_BYTES", 10 if spill else 1 << 20)
    target = tmp_path / "f.bin"
    chunks = [bytes([i]) * 7 for i in range(5)]
    files.atomic_write(target, lambda h: [h.write(c) for c in chunks], background=True)
    files.wait()
    assert target.read_bytes() == b"".join(chunks)

    def broken(handle):
        for chunk in chunks:
            handle.write(chunk)
        raise ValueError("serialisation failed")

    with pytest.raises(ValueError, match="serialisation failed"):
        files.atomic_write(target, broken, background=True)
    files.wait()
    assert target.read_bytes() == b"".join(chunks)
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_deferred_writes_start_when_the_block_ends_and_wait_hands_them_over(tmp_path):
    target = tmp_path / "f.txt"
    with files.deferred():
        files.atomic_write_text(target, "one", background=True)
        with files.deferred():  # nested: still held until the outer block ends
            files.atomic_write_text(target, "two", background=True)
        time.sleep(0.05)
        assert not target.exists()
    files.wait()
    assert target.read_text() == "two"
    with files.deferred():
        files.atomic_write_text(target, "three", background=True)
        files.wait()  # a reader inside the block gets the file in place
        assert target.read_text() == "three"
        files.atomic_write_text(target, "four", background=True)
    files.wait()
    assert target.read_text() == "four"


def test_a_file_written_at_most_every_so_often_keeps_only_its_newest_version(tmp_path):
    target = tmp_path / "metrics.csv"
    written = []
    real = files._Spool.finish

    def counted(spool):
        written.append(spool.path.name)
        real(spool)

    files._Spool.finish = counted
    try:
        for i in range(30):  # thirty epochs within the interval
            files.atomic_write_text(target, f"rows {i}", at_most_every=0.3)
        time.sleep(0.1)
        assert not target.exists()  # the first version waits for the interval too
        deadline = time.monotonic() + 10
        while not target.exists() and time.monotonic() < deadline:  # due after 0.3 s: no wait()
            time.sleep(0.02)
        assert target.read_text() == "rows 29" and written == ["metrics.csv"]  # due: written alone
        files.atomic_write_text(target, "rows 30", at_most_every=0.3)
        files.atomic_write_text(target, "rows 31", at_most_every=60)
        files.wait()  # a reader: the waiting version is written now
        assert target.read_text() == "rows 31" and written == ["metrics.csv"] * 2
    finally:
        files._Spool.finish = real
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_a_forked_child_never_writes_its_parents_pending_files(tmp_path):
    script = tmp_path / "fork.py"
    script.write_text(
        "import os, sys\n"
        "from pathlib import Path\n"
        "from traincraft import files\n"
        "target = Path(sys.argv[1])\n"
        "files.atomic_write_text(target / 'mirror.txt', 'parent', at_most_every=60)\n"  # waiting in the parent
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    files.atomic_write_text(target / 'child.txt', 'child', background=True)\n"
        "    sys.exit(0)\n"  # a normal exit: atexit runs the child's files.wait()
        "os.waitpid(pid, 0)\n"
        "print(sorted(p.name for p in target.iterdir()))\n"
        "files.wait()\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['child.txt']"  # the parent's waiting version was not written by the child
    assert (out / "mirror.txt").read_text() == "parent"  # the parent's own wait() wrote it
