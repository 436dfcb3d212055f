"""Where an engine puts its scratch: Apptainer unpacks an image it converts in memory when there is room and the
user named no place of their own (bench/sif.py measures what it saves; the conversions themselves are
tests/test_apptainer.py's, for real)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from runner.engines.apptainer.tool import MEMORY, unpacked_in_memory

pytestmark = pytest.mark.skipif(not MEMORY.is_dir(), reason="no /dev/shm on this machine")


@pytest.fixture
def no_place(monkeypatch):
    monkeypatch.delenv("APPTAINER_TMPDIR", raising=False)
    monkeypatch.delenv("TMPDIR", raising=False)


def test_an_image_that_fits_twice_is_unpacked_in_a_folder_of_its_own_in_memory(no_place):
    with unpacked_in_memory(200 << 20) as env:
        place = Path(env["APPTAINER_TMPDIR"])
        assert place.parent == MEMORY and place.is_dir()
    assert not place.exists()


@pytest.mark.parametrize("named", ["APPTAINER_TMPDIR", "TMPDIR"])
def test_a_place_the_user_named_is_left_to_apptainer(no_place, monkeypatch, named, tmp_path):
    monkeypatch.setenv(named, str(tmp_path))
    with unpacked_in_memory(1 << 20) as env:
        assert env == {}


def test_an_image_memory_cannot_hold_twice_or_of_unknown_size_goes_where_apptainer_puts_it(no_place):
    for size in (shutil.disk_usage(MEMORY).free // 2, None):
        with unpacked_in_memory(size) as env:
            assert env == {}


def test_the_folder_of_a_runner_killed_outright_goes_at_the_next_conversion(no_place):
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = Path(tempfile.mkdtemp(prefix=f"itwin-sif-{dead.pid}-", dir=MEMORY))
    (left / "rootfs").mkdir()
    alive = Path(tempfile.mkdtemp(prefix=f"itwin-sif-{os.getppid()}-", dir=MEMORY))
    try:
        with unpacked_in_memory(1 << 20):
            pass
        assert not left.exists() and alive.is_dir()
    finally:
        shutil.rmtree(left, ignore_errors=True)
        shutil.rmtree(alive, ignore_errors=True)
