"""The command line's memory: the folder each command last wrote, per working directory, so that the next
command given no folder takes it. Only the CLI modules (cli.py, deploy/cli.py, bench/cli.py) use it: the
Python API takes explicit folders and never reads or writes this state."""
import json
import os
from pathlib import Path

from .errors import LSGExportError


def _state_file():
    root = Path(os.environ.get("LSG_EXPORT_HOME", Path.home() / ".cache" / "lsg-export"))
    return root / "last-outputs.json"


def remember_output(kind, path):
    """Remember the folder `lsg-export kind` ('convert', 'onnx') wrote from the current directory."""
    state_file = _state_file()
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        state = {}
    state.setdefault(kind, {})[str(Path.cwd().resolve())] = str(Path(path).resolve())
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps(state, indent=1))


def last_output(kind):
    """The folder `lsg-export kind` last wrote from the current directory; LSGExportError when there is none."""
    try:
        path = json.loads(_state_file().read_text())[kind][str(Path.cwd().resolve())]
    except (OSError, ValueError, KeyError, TypeError):
        raise LSGExportError(f"no MODEL given and `lsg-export {kind}` has written nothing from this directory "
                             f"yet: name a folder") from None
    if not Path(path).is_dir():
        raise LSGExportError(f"the last folder `lsg-export {kind}` wrote from here, {path}, is gone: name a folder")
    return path


def given_or_last(folder, kind, console):
    """`folder`, or when None the last one `lsg-export kind` wrote from here, which `console` is told."""
    if folder is not None:
        return folder
    folder = last_output(kind)
    console.print(f"using {folder} (the last folder `lsg-export {kind}` wrote from here)", soft_wrap=True)
    return folder
