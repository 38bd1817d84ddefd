"""`lsg-export deploy`: an export folder -> a Triton model repository + a KServe manifest + README.

    REPO/<name>/config.pbtxt           Triton model configuration (onnxruntime backend)
    REPO/<name>/1/model.onnx           the graph (+ its external data file)
    REPO/<name>/liblsg_ops.so          the custom-op library, when the graph uses it
    REPO/<name>-tokenizer/             an encoder's export with a tokenizer.json: python-backend model (model.py,
                                       text_tokens.py, the tokenizer files in 1/) turning `text` into token ids
    REPO/<name>-text/                  the ensemble: `text` -> <name>-tokenizer -> <name> (ids stay accepted by <name>)
    REPO/inferenceservice.yaml         KServe InferenceService (Triton runtime) serving REPO
    REPO/README.md                     how to run Triton on REPO and apply the manifest
"""
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..folders import atomic_folder, check_output
from . import kserve, text_tokens, triton
from .folder import check_name, open_export, read_meta
from .seq2seq_export import is_seq2seq, open_seq2seq_export
from .summariser_repository import deploy_summariser
from .readme import repository_readme

MANIFEST = "inferenceservice.yaml"


@dataclass
class DeployResult:
    path: Path  # REPO
    name: str
    config: object  # the ModelConfig message written to config.pbtxt
    files: list  # paths written, relative to REPO
    op_library: str = None  # file name of the copied custom-op library
    text_model: str = None  # the ensemble taking `text` (None: the export has no tokenizer.json)
    text_configs: dict = None  # model name -> ModelConfig of the tokenizer model and the ensemble

    def to_dict(self):
        return {"repository": str(self.path), "name": self.name, "files": self.files, "op_library": self.op_library,
                "max_batch_size": self.config.max_batch_size, "text_model": self.text_model}


def deploy(export, output=None, *, name=None, max_batch_size=8, instances=1, device="cpu",
           dynamic_batching=True, max_queue_delay_us=100, allow_unvalidated=False, force=False):
    """Write the deployment of the export folder `export` to `output` (default: <export>-deploy): the graph's
    model, or for an encoder-decoder export the summariser's models (summariser_repository.py; its graph models
    take whole batches, so max_batch_size and dynamic batching do not apply). Returns a DeployResult;
    LSGExportError for bad input."""
    if is_seq2seq(read_meta(export)):
        folder = open_seq2seq_export(export, allow_unvalidated)
        name = check_name(name) if name else folder.default_name()
        output = Path(output) if output else folder.path.resolve().with_name(folder.path.resolve().name + "-deploy")
        config, files, op_library = deploy_summariser(folder, output, name, instances=instances, device=device,
                                                      force=force)
        return DeployResult(output, name, config, files, op_library)
    folder = open_export(export, allow_unvalidated)
    name = check_name(name) if name else folder.default_name()
    output = Path(output) if output else folder.path.resolve().with_name(folder.path.resolve().name + "-deploy")
    check_output(output, force)
    op_library = None
    library = None
    if folder.needs_custom_ops:
        from ..ops.build import library_path
        library = library_path()
        op_library = library.name
    config = triton.model_config(folder, name, max_batch_size=max_batch_size, instances=instances, device=device,
                                 dynamic_batching=dynamic_batching, max_queue_delay_us=max_queue_delay_us,
                                 op_library=op_library)
    text_configs = {}
    if folder.tokenizer_file is not None and text_tokens.fills([spec.name for spec in folder.inputs]):
        tokenizer, ensemble = f"{name}-tokenizer", f"{name}-text"
        text_configs = {tokenizer: triton.tokenizer_config(folder, tokenizer, folder.seq),
                        ensemble: triton.ensemble_config(folder, ensemble, tokenizer, name)}
    model_files = [folder.model_file.name, *folder.data_files]
    model_bytes = sum((folder.path / f).stat().st_size for f in model_files)
    service = kserve.inference_service(name, storage_uri=f"pvc://lsg-models/{output.name}", model_bytes=model_bytes,
                                       instances=instances, device=device, max_batch_size=max_batch_size)
    with atomic_folder(output, force) as tmp:
        version = tmp / name / "1"
        version.mkdir(parents=True)
        for file in model_files:
            target = version / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder.path / file, target)
        if library is not None:
            shutil.copy2(library, tmp / name / op_library)
        (tmp / name / "config.pbtxt").write_text(triton.to_text(config))
        for model, model_config in text_configs.items():
            (tmp / model / "1").mkdir(parents=True)  # an ensemble's version folder stays empty
            (tmp / model / "config.pbtxt").write_text(triton.to_text(model_config))
            if model_config.backend == "python":
                _write_tokenizer_model(folder.path, tmp / model / "1")
        (tmp / MANIFEST).write_text(kserve.to_yaml(service, header=(
            f"KServe InferenceService for the Triton repository written by lsg-export deploy.\n"
            f"Copy the repository folder to the volume storageUri names (or change storageUri), then:\n"
            f"  kubectl apply -f {MANIFEST}")))
        text_model = next((m for m, c in text_configs.items() if c.platform == "ensemble"), None)
        (tmp / "README.md").write_text(repository_readme(folder, config, output.name, op_library, MANIFEST,
                                                         text_model))
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    return DeployResult(output, name, config, files, op_library, text_model, text_configs)


def _write_tokenizer_model(export_path, version):
    """model.py, the text_tokens.py it imports and the tokenizer files it reads, into the model's version folder."""
    # a file, not an import: it imports Triton's triton_python_backend_utils
    shutil.copy2(Path(__file__).with_name("triton_tokenizer_model.py"), version / "model.py")
    shutil.copy2(text_tokens.__file__, version / "text_tokens.py")
    for file in text_tokens.TOKENIZER_FILES:
        if (export_path / file).is_file():
            shutil.copy2(export_path / file, version / file)
