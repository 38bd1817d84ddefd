"""Output folders: refuse a non-empty one without force, write into a temporary folder beside it and put
that in place only once everything is written (convert, onnx and deploy all write this way)."""
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import LSGExportError


def check_output(output, force):
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise LSGExportError(f"{output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise LSGExportError(f"{output} exists and is not empty: pass --force to replace it")
    return output


@contextmanager
def atomic_folder(output, force, carry_over=None):
    """Yield a temporary folder beside `output`; put it in place of `output` only if the block succeeds,
    with the modes the umask gives new files and folders.

    An existing `output` (allowed by `force`) is replaced whole, except the entries named by
    `carry_over(output, tmp)`, called once the block has succeeded: those are moved into the new folder."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        yield tmp
        follow_umask(tmp)
        if output.exists():
            check_output(output, force)
            _swap(output, tmp, carry_over(output, tmp) if carry_over else ())
        else:
            tmp.rename(output)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def current_umask():
    """The process umask, read from /proc where it can be (setting it to read it races with other threads)."""
    try:
        return int(re.search(r"^Umask:\s*([0-7]+)", Path("/proc/self/status").read_text(), re.M).group(1), 8)
    except (OSError, AttributeError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def follow_umask(folder):
    """Give `folder` and what it holds the modes of ordinary new files and folders, 0666 (0777 for folders
    and executables) less the umask: mkdtemp makes 0700 folders, safetensors writes 0600 files."""
    mask = current_umask()
    for path in (folder, *folder.rglob("*")):
        if not path.is_symlink():
            executable = path.is_dir() or path.stat().st_mode & 0o100
            path.chmod((0o777 if executable else 0o666) & ~mask)


def _swap(output, tmp, kept):
    """Put `tmp` in place of `output`, with output's `kept` entries moved into it (renames, no copies).
    The old folder is set aside first and deleted last, so that a failed move puts it back as it was."""
    old = tmp.with_name(tmp.name + ".old")  # tmp's name is unique, so is this one
    output.rename(old)
    moved = []
    try:
        for name in kept:
            (old / name).rename(tmp / name)
            moved.append(name)
        tmp.rename(output)
    except BaseException:  # interrupted too: tmp is deleted on the way out, the kept entries must not be
        for name in moved:
            (tmp / name).rename(old / name)
        old.rename(output)
        raise
    shutil.rmtree(old, ignore_errors=True)
