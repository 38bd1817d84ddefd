"""Building the ONNX Runtime custom-op library (`ai.lsg.LSGAttention`, `ai.lsg.BlockSparseAttention`): CMake, and
the ONNX Runtime headers fetched with npm.

`library_path()` is the one function every session creator uses (through ops.session): it builds the
library on first use (CMake, Release, into a cache folder) and afterwards only when its sources change.

Cache: $LSG_EXPORT_CACHE, else ~/.cache/lsg-export; inside it `ort-headers/` (the ONNX Runtime
C/C++ headers, fetched once with `npm pack` unless $ORT_INCLUDE_DIR names a folder holding them)
and `ops-build/<key>/` (one build per source hash, CUDA choice and machine).
"""
import contextlib
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..errors import LSGExportError

ORT_HEADERS_PACKAGE = "com.github.asus4.onnxruntime@0.4.9"  # MIT; ONNX Runtime C API version 29
BUILD_HINT = "run `lsg-export build-ops`"

_SOURCE_GLOBS = ("CMakeLists.txt", "src/*", "include/**/*")
_LIBRARY_NAMES = {"Linux": "liblsg_ops.so", "Darwin": "liblsg_ops.dylib", "Windows": "lsg_ops.dll"}
_NO_CMAKE = "building the custom ops needs cmake (>= 3.18) and a C++17 compiler"
_NO_NPM = ("building the custom ops needs the ONNX Runtime C/C++ headers: install npm (they are "
           f"fetched with `npm pack {ORT_HEADERS_PACKAGE}`) or set ORT_INCLUDE_DIR")
_built = {}  # (cuda, source key) -> Path, for this process


def cache_dir():
    return Path(os.environ.get("LSG_EXPORT_CACHE") or Path.home() / ".cache" / "lsg-export")


def source_dir():
    """custom_ops/ of the checkout (override: $LSG_EXPORT_OPS_SOURCE)."""
    candidates = [os.environ.get("LSG_EXPORT_OPS_SOURCE"), Path(__file__).resolve().parents[2] / "custom_ops"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "CMakeLists.txt").is_file():
            return Path(candidate)
    raise LSGExportError("the custom-op sources (custom_ops/) are not found: install lsg-export from a checkout "
                         "(pip install -e .) or set LSG_EXPORT_OPS_SOURCE to its custom_ops folder")


def _library_name():
    return _LIBRARY_NAMES.get(platform.system(), "liblsg_ops.so")


def _find_nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return None


@functools.lru_cache(maxsize=None)
def _gpu_visible():
    """Whether this machine shows a CUDA GPU (device node or `nvidia-smi -L`)."""
    if Path("/dev/nvidia0").exists():
        return True
    smi = shutil.which("nvidia-smi")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return bool(smi) and subprocess.run([smi, "-L"], capture_output=True, timeout=20).returncode == 0
    return False


def _cuda_choice(cuda):
    """(build CUDA?, nvcc, architectures). cuda None: only where nvcc and a GPU are both found (a CPU
    machine with a CUDA toolkit keeps the quick CPU build); True: require nvcc; False: CPU only.
    $LSG_OPS_CUDA_ARCHS (e.g. "80") overrides CMake's architecture list (default 80;86;89;90)."""
    nvcc = _find_nvcc()
    if cuda and not nvcc:
        raise LSGExportError("--cuda asked for, but nvcc is not found (put it on PATH or set CUDA_HOME)")
    use_cuda = bool(nvcc) and _gpu_visible() if cuda is None else bool(cuda)
    return use_cuda, nvcc, (os.environ.get("LSG_OPS_CUDA_ARCHS", "").strip() if use_cuda else "")


def _machine_tag():
    """The CPU kernel is built with -march=native: a build is only reused on the same CPU."""
    tag = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "model name")):
                tag += line
    return tag


def _source_key(src, include_dir, cuda):
    digest = hashlib.sha256()
    files = sorted({p for pattern in _SOURCE_GLOBS for p in src.glob(pattern) if p.is_file()})
    for path in files:
        digest.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(f"{include_dir}\0{cuda}\0{_machine_tag()}".encode())
    return digest.hexdigest()[:20]


@contextlib.contextmanager
def _locked(path):
    """An exclusive lock file, so that parallel processes build once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: no lock
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ort_include_dir():
    """Folder holding onnxruntime_cxx_api.h: $ORT_INCLUDE_DIR, else the npm package, fetched once."""
    given = os.environ.get("ORT_INCLUDE_DIR")
    if given:
        if not (Path(given) / "onnxruntime_cxx_api.h").is_file():
            raise LSGExportError(f"ORT_INCLUDE_DIR={given} holds no onnxruntime_cxx_api.h")
        return Path(given)
    root = cache_dir() / "ort-headers" / ORT_HEADERS_PACKAGE.replace("@", "-")
    found = _headers_in(root)
    if found:
        return found
    with _locked(root.parent / (root.name + ".lock")):
        found = _headers_in(root)
        if found:
            return found
        npm = shutil.which("npm")
        if not npm:
            raise LSGExportError(_NO_NPM)
        with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
            result = subprocess.run([npm, "pack", ORT_HEADERS_PACKAGE, "--silent"], cwd=tmp, capture_output=True,
                                    text=True)
            archives = list(Path(tmp).glob("*.tgz"))
            if result.returncode or not archives:
                raise LSGExportError(f"`npm pack {ORT_HEADERS_PACKAGE}` failed: "
                                     f"{(result.stderr or result.stdout).strip()[-300:]} (or set ORT_INCLUDE_DIR)")
            staging = Path(tmp) / "headers"
            with tarfile.open(archives[0]) as archive:  # headers only: the package is ~150 MB of binaries
                members = [m for m in archive.getmembers() if m.isfile() and m.name.endswith(".h")
                           and "/Headers/" in m.name and ".." not in m.name]
                archive.extractall(staging, members=members, filter="data")
            if not _headers_in(staging):
                raise LSGExportError(f"{ORT_HEADERS_PACKAGE} holds no onnxruntime_cxx_api.h; set ORT_INCLUDE_DIR")
            if root.exists():
                shutil.rmtree(root)
            staging.rename(root)
    return _headers_in(root)


def _headers_in(root):
    if not root.is_dir():
        return None
    hits = sorted(root.rglob("onnxruntime_cxx_api.h"), key=lambda p: (len(p.parts), str(p)))
    hits = [p.parent for p in hits if (p.parent / "onnxruntime_c_api.h").is_file()]
    return hits[0] if hits else None


def missing_build_tool():
    """Why the library cannot be built on this machine for want of a tool (cmake; npm when the ONNX Runtime
    headers are neither given nor fetched yet), else None: whatever else fails is a build failure."""
    if not shutil.which("cmake"):
        return _NO_CMAKE
    headers_known = os.environ.get("ORT_INCLUDE_DIR") or _headers_in(
        cache_dir() / "ort-headers" / ORT_HEADERS_PACKAGE.replace("@", "-"))
    if not headers_known and not shutil.which("npm"):
        return _NO_NPM
    return None


def build_ops(cuda=None, force=False, verbose=False):
    """Configure and build the custom-op library (CMake, Release); returns its path.

    Cached per source hash: nothing is rebuilt unless the sources, the headers, the CUDA choice or
    the machine changed, or `force`. cuda: None = when nvcc is found and a GPU is visible, True =
    require nvcc (a GPU is not needed to compile), False = CPU only; see `_cuda_choice`."""
    use_cuda, nvcc, archs = _cuda_choice(cuda)
    src = source_dir()
    include_dir = ort_include_dir()
    key = _source_key(src, include_dir, f"{use_cuda}{archs}")
    if not force and (use_cuda, key) in _built:
        return _built[(use_cuda, key)]
    cmake = shutil.which("cmake")
    if not cmake:
        raise LSGExportError(_NO_CMAKE)
    build_dir = cache_dir() / "ops-build" / key
    library = build_dir / _library_name()
    stamp = build_dir / "built.ok"
    with _locked(build_dir.parent / (key + ".lock")):
        if force or not (stamp.is_file() and library.is_file()):
            if force and build_dir.exists():
                shutil.rmtree(build_dir)
            stamp.unlink(missing_ok=True)
            configure = [cmake, "--no-warn-unused-cli", "-S", str(src), "-B", str(build_dir),
                         "-DCMAKE_BUILD_TYPE=Release",
                         f"-DORT_INCLUDE_DIR={include_dir}", f"-DLSG_OPS_CUDA={'ON' if use_cuda else 'OFF'}",
                         f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={build_dir}"]
            if use_cuda:
                configure.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
                if archs:
                    configure.append(f"-DCMAKE_CUDA_ARCHITECTURES={archs}")
            jobs = str(max(1, min(2, os.cpu_count() or 1)))
            for step in (configure, [cmake, "--build", str(build_dir), "--config", "Release", "-j", jobs]):
                result = subprocess.run(step, capture_output=not verbose, text=True)
                if result.returncode:
                    tail = "\n".join(((result.stdout or "") + (result.stderr or "")).strip().splitlines()[-20:])
                    raise LSGExportError(f"building the custom ops failed ({' '.join(step[:2])}):\n{tail}")
            if not library.is_file():  # multi-config generators put it under Release/
                candidates = list(build_dir.rglob(_library_name()))
                if not candidates:
                    raise LSGExportError(f"the build produced no {_library_name()} in {build_dir}")
                shutil.copy2(candidates[0], library)
            stamp.write_text(key)
    _built[(use_cuda, key)] = library
    return library


def library_path(build=True):
    """The custom-op library; built first if missing or stale (build=False: raise instead)."""
    if build:
        return build_ops()
    src = source_dir()
    given = os.environ.get("ORT_INCLUDE_DIR")
    include_dir = Path(given) if given else _headers_in(
        cache_dir() / "ort-headers" / ORT_HEADERS_PACKAGE.replace("@", "-"))
    if include_dir is None:  # headers never fetched: the library cannot have been built
        raise LSGExportError(f"the custom-op library is not built: {BUILD_HINT}")
    use_cuda, _, archs = _cuda_choice(None)
    key = _source_key(src, include_dir, f"{use_cuda}{archs}")
    library = cache_dir() / "ops-build" / key / _library_name()
    if not (library.parent / "built.ok").is_file():
        raise LSGExportError(f"the custom-op library is not built: {BUILD_HINT}")
    return library


if __name__ == "__main__":  # python -m lsg_export.ops.build [--force]
    print(build_ops(force="--force" in sys.argv))
