"""What convert writes follows the umask like any new file (issue 19: model.safetensors came out 0600,
as safetensors writes it, in a 0755 folder); entries a --force conversion keeps keep their modes."""
import os
import stat

import pytest

from conftest import TINY_BLOCK_SIZE
from lsg_export import convert

SMALL = dict(block_size=TINY_BLOCK_SIZE, sparse_block_size=TINY_BLOCK_SIZE, max_sequence_length=128)


@pytest.fixture
def umask():
    """umask(mask) for the test; the process's is restored after it."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def modes(folder):
    """{name: permission bits} of `folder` ('.') and the entries under it."""
    return {str(path.relative_to(folder)): stat.S_IMODE(path.stat().st_mode) for path in [folder, *folder.rglob("*")]}


@pytest.mark.parametrize("mask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_written_files_follow_the_umask(tiny_bert, tmp_path, umask, mask, file_mode, folder_mode):
    umask(mask)
    out = tmp_path / "out"
    convert(str(tiny_bert), out, **SMALL)
    found = modes(out)
    assert "model.safetensors" in found and "config.json" in found and "modeling_lsg_bert.py" in found
    assert found == {name: folder_mode if name == "." else file_mode for name in found}


def test_force_leaves_kept_modes_alone(tiny_bert, tmp_path, umask):
    out = tmp_path / "out"
    convert(str(tiny_bert), out, **SMALL)
    (out / "secret.txt").write_text("mine")
    (out / "secret.txt").chmod(0o600)
    (out / "onnx").mkdir(mode=0o700)
    convert(str(tiny_bert), out, **SMALL, force=True, notice=lambda message: None)
    found = modes(out)
    assert (found["secret.txt"], found["onnx"]) == (0o600, 0o700)
    assert (found["."], found["model.safetensors"]) == (0o755, 0o644)
