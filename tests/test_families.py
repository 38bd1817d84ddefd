"""Every family and head on tiny random checkpoints.

A converted folder must be self-contained: each head is loaded back with the transformers Auto
class and trust_remote_code=True in a fresh Python where lsg_export cannot be imported, and must
give exactly the outputs of the model convert returned."""
import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from conftest import (TINY_BLOCK_SIZE, as_reference_checkpoint, base_of, lsg_variant, max_diff, original_class,
                      pad_row, tiny_input_ids)
from lsg_export import convert
from lsg_export.families import AUTO_CLASSES, FAMILIES

LENGTH = 256  # max_sequence_length of the tiny conversions (originals: 64 positions)
INPUT_LENGTH, PADDED_ROW_LENGTH = 100, 70  # ~13 blocks of 8, past the original 64 positions


def pad_id(model_type):
    return 1 if FAMILIES[model_type].position_offset else 0


def head_inputs(model_type, head):
    """The fixed input of every head: 2 rows of 100 tokens, row 1 padded after 70
    (multiple choice: the same tokens as 1 example with 2 choices)."""
    ids = tiny_input_ids(2, INPUT_LENGTH, torch.Generator().manual_seed(1))
    ids, mask = pad_row(ids, 1, PADDED_ROW_LENGTH, pad_id(model_type))
    if head == "ForMultipleChoice":
        ids, mask = ids.unsqueeze(0), mask.unsqueeze(0)
    return {"input_ids": ids, "attention_mask": mask}


def run_head(model, inputs):
    with torch.no_grad():
        return [x for x in model(**inputs, return_dict=True).to_tuple() if isinstance(x, torch.Tensor)]


def convert_tiny(checkpoint, output, model_type, head, **options):
    options = dict(dict(max_sequence_length=LENGTH, block_size=TINY_BLOCK_SIZE, sparse_block_size=TINY_BLOCK_SIZE),
                   **options)
    return convert(str(checkpoint), output, architecture=FAMILIES[model_type].architecture(head), **options)


# Runs in the fresh Python: blocks lsg_export, loads every head with its Auto class, saves the outputs
# (or, for a job with a "generate" entry, the tokens model.generate gives).
REMOTE_SCRIPT = textwrap.dedent('''
    import importlib.abc, sys

    class NoLsgExport(importlib.abc.MetaPathFinder):
        """lsg_export is installed (editable) in site-packages: neither the working directory nor
        PYTHONPATH hides it, so refuse it here."""
        def find_spec(self, name, path=None, target=None):
            if name == "lsg_export" or name.startswith("lsg_export."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, NoLsgExport())
    try:
        import lsg_export  # noqa: F401
        importable = True
    except ImportError:
        importable = False

    import torch, transformers
    jobs = torch.load(sys.argv[1])
    results = {"lsg_export_importable": importable, "heads": {}}
    for head, job in jobs.items():
        model = getattr(transformers, job["auto_class"]).from_pretrained(job["folder"], trust_remote_code=True).eval()
        with torch.no_grad():
            if "generate" in job:  # encoder-decoders: the generated tokens
                outputs = [model.generate(**job["inputs"], **job["generate"])]
            else:
                outputs = [x for x in model(**job["inputs"], return_dict=True).to_tuple()
                           if isinstance(x, torch.Tensor)]
        results["heads"][head] = {"class": type(model).__module__ + "." + type(model).__name__, "outputs": outputs}
    results["lsg_export_loaded"] = any(m == "lsg_export" or m.startswith("lsg_export.") for m in sys.modules)
    torch.save(results, sys.argv[2])
''')


def start_remote(work, jobs):
    """Start the fresh Python on `jobs` ({head: {auto_class, folder, inputs}}) in `work`."""
    torch.save(jobs, work / "jobs.pt")
    (work / "remote.py").write_text(REMOTE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(HF_HOME=str(work / "hf-home"),  # transformers copies the remote code under HF_HOME/modules
               HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    # -I: ignore PYTHON* variables and user site, and do not put the script's folder on sys.path
    with open(work / "log.txt", "w") as log:  # a file, not a pipe: a full pipe would stall the process
        return subprocess.Popen([sys.executable, "-I", "remote.py", "jobs.pt", "results.pt"], cwd=work, env=env,
                                stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def families(tiny_checkpoint, tmp_path_factory):
    """Every head of every family converted in-process, with the outputs of the models convert returned.

    {family: SimpleNamespace(results={head: ConvertResult}, inputs={head: ...}, expected={head: outputs}, work)}"""
    converted = {}
    for model_type, family in FAMILIES.items():
        work = tmp_path_factory.mktemp(f"lsg-{model_type}")
        results = {head: convert_tiny(tiny_checkpoint(model_type), work / head, model_type, head)
                   for head in family.heads}
        inputs = {head: head_inputs(model_type, head) for head in family.heads}
        expected = {head: run_head(results[head].model, inputs[head]) for head in family.heads}
        converted[model_type] = SimpleNamespace(results=results, inputs=inputs, expected=expected, work=work)
    return converted


@pytest.fixture(scope="module")
def remote_runs(families):
    """One fresh Python per family, all started at once (they overlap; each test waits for its own)."""
    processes = {}
    for model_type, converted in families.items():
        jobs = {head: {"auto_class": AUTO_CLASSES[head], "folder": str(result.path), "inputs": converted.inputs[head]}
                for head, result in converted.results.items()}
        processes[model_type] = start_remote(converted.work, jobs)
    yield processes
    for process in processes.values():
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_heads_load_without_lsg_export(families, remote_runs, model_type):
    prepared, family, process = families[model_type], FAMILIES[model_type], remote_runs[model_type]
    process.wait(timeout=300)
    assert process.returncode == 0, (prepared.work / "log.txt").read_text()[-3000:]
    remote = torch.load(prepared.work / "results.pt")
    assert remote["lsg_export_importable"] is False and remote["lsg_export_loaded"] is False
    assert set(remote["heads"]) == set(family.heads)
    for head, expected in prepared.expected.items():
        got = remote["heads"][head]
        # the class came from the folder's own code, copied by transformers
        assert got["class"].startswith("transformers_modules.") and got["class"].endswith("." + family.class_name(head))
        assert type(prepared.results[head].model).__name__ == family.class_name(head)
        assert len(got["outputs"]) == len(expected) > 0, head
        for actual, wanted in zip(got["outputs"], expected):
            assert actual.shape == wanted.shape, head
            assert torch.isfinite(actual).all(), head
            assert max_diff(actual, wanted) <= 1e-6, head


@pytest.mark.quick
@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_converted_folder_layout(families, model_type):
    family = FAMILIES[model_type]
    for head, result in families[model_type].results.items():
        config = json.loads((result.path / "config.json").read_text())
        assert config["architectures"] == [family.class_name(head)]
        assert config["max_position_embeddings"] == LENGTH + family.position_offset
        assert (config["block_size"], config["sparse_block_size"], config["sparsity_type"]) == (8, 8, "norm")
        # every auto_map entry names a class of a file that is in the folder
        for target in config["auto_map"].values():
            module, name = target.split(".")
            assert (result.path / f"{module}.py").is_file()
            assert hasattr(family.load_module(), name)
        assert config["auto_map"][AUTO_CLASSES[head]] == f"{family.module}.{family.class_name(head)}"


def first_token_global(model, input_ids, model_type):
    """The input embedding (word + position + token type 0, before LayerNorm) of the first token."""
    embeddings = base_of(model).embeddings
    position = FAMILIES[model_type].position_offset  # roberta: the first real position id is padding_idx + 1 = 2
    row = embeddings.word_embeddings.weight[input_ids[0, 0]] + embeddings.position_embeddings.weight[position]
    if hasattr(embeddings, "token_type_embeddings"):
        row = row + embeddings.token_type_embeddings.weight[0]
    return row


@pytest.mark.parametrize("length", [2 * TINY_BLOCK_SIZE, TINY_BLOCK_SIZE + 3])
@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_up_to_two_blocks_equals_original(families, tiny_checkpoint, model_type, length):
    """mask_first_token + 1 global holding the first token's input embedding: up to 2 blocks the LSG
    base model computes exactly the original dense encoder (padding in one row)."""
    converted = families[model_type].results["Model"].model
    model = lsg_variant(converted, mask_first_token=True, num_global_tokens=1)
    ids = tiny_input_ids(2, length, torch.Generator().manual_seed(length))
    ids[:, 0] = ids[0, 0]  # one global serves both rows: they must start with the same token (like [CLS])
    ids, mask = pad_row(ids, 1, length - 5, pad_id(model_type))
    with torch.no_grad():
        base_of(model).embeddings.global_embeddings.weight[0] = first_token_global(model, ids, model_type)
        actual = model(input_ids=ids, attention_mask=mask).last_hidden_state
    original = original_class(model_type, "Model").from_pretrained(
        tiny_checkpoint(model_type), attn_implementation="eager").eval()
    with torch.no_grad():
        expected = original(input_ids=ids, attention_mask=mask).last_hidden_state
        default = converted(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert max_diff(actual[real], expected[real]) <= 1e-5
    assert max_diff(default[real], expected[real]) > 1e-3  # without the trick the global token changes things


def test_adopted_reference_checkpoint_resize_lsg(families, tiny_checkpoint, tmp_path):
    """A reference-format LSG checkpoint (base_model_prefix 'lsg', auto_map naming modeling code that
    is not there) converts again with --resize-lsg: globals and weights kept, positions re-tiled."""
    adopted = tmp_path / "adopted"
    remote = "ccdv/lsg-bert-base-4096--modeling_lsg_bert."
    globals_ = "bert.embeddings.global_embeddings.weight"
    weights = as_reference_checkpoint(families["bert"].results["ForMaskedLM"].path, adopted,
                                      {"AutoConfig": remote + "LSGBertConfig",
                                       "AutoModelForMaskedLM": remote + "LSGBertForMaskedLM"}, globals_)

    from lsg_export.cli import main
    output = tmp_path / "resized"
    run = CliRunner().invoke(main, ["convert", str(adopted), "-o", str(output), "--max-sequence-length", "512",
                                    "--resize-lsg", "--json"])
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout)["output"] == str(output)

    before = load_file(str(adopted / "model.safetensors"))
    after = load_file(str(output / "model.safetensors"))
    original = load_file(str(tiny_checkpoint("bert") / "model.safetensors"))
    positions = "bert.embeddings.position_embeddings.weight"
    assert after[positions].shape == (512, 32)
    assert torch.equal(after[positions], original[positions][torch.arange(512) % 64])
    assert set(after) == set(before)
    assert torch.equal(after[globals_], weights[globals_])
    for key in before:
        if key != positions:
            assert torch.equal(after[key], before[key]), key
    new_config = json.loads((output / "config.json").read_text())
    assert new_config["block_size"] == TINY_BLOCK_SIZE and new_config["max_position_embeddings"] == 512
    assert new_config["auto_map"]["AutoModelForMaskedLM"] == "modeling_lsg_bert.LSGBertForMaskedLM"
    assert (output / "modeling_lsg_bert.py").is_file()
