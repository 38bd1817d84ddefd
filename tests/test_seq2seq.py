"""Encoder-decoder families (bart, mbart, pegasus) on tiny random checkpoints: convert, load in a fresh
process without lsg_export, LSG encoder vs dense encoder, cross-attention mask, generation."""
import json
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from conftest import (TINY_BLOCK_SIZE, MASK_ID, as_reference_checkpoint, lsg_variant, max_diff, original_class,
                      tiny_config)
from lsg_export import convert
from lsg_export.families import AUTO_CLASSES, SEQ2SEQ_FAMILIES
from test_families import start_remote

LENGTH = 4096  # max_sequence_length of the tiny conversions (originals: 64 positions)
FAMILY_NAMES = list(SEQ2SEQ_FAMILIES)


def pad_id(model_type):
    return 0 if model_type == "pegasus" else 1


def eos_id(model_type):
    return 1 if model_type == "pegasus" else 2


def batch(model_type, length, padded_length, seed=1):
    """2 rows of `length` random ids (5..99), each ending with eos; row 1 padded after `padded_length`."""
    ids = torch.randint(5, 100, (2, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    ids[0, -1] = ids[1, padded_length - 1] = eos_id(model_type)
    ids[1, padded_length:] = pad_id(model_type)
    mask[1, padded_length:] = 0
    return ids, mask


def head_inputs(model_type, head):
    ids, mask = batch(model_type, 100, 70)
    inputs = {"input_ids": ids, "attention_mask": mask}
    if head in ("Model", "ForConditionalGeneration"):
        inputs["decoder_input_ids"] = torch.randint(5, 100, (2, 9), generator=torch.Generator().manual_seed(2))
    return inputs


def tensors(output):
    return [x for x in output.to_tuple() if isinstance(x, torch.Tensor)]


def convert_tiny(checkpoint, output, model_type, head, **options):
    options = dict(dict(max_sequence_length=LENGTH, block_size=TINY_BLOCK_SIZE, sparse_block_size=TINY_BLOCK_SIZE),
                   **options)
    return convert(str(checkpoint), output, architecture=SEQ2SEQ_FAMILIES[model_type].architecture(head), **options)


GENERATE = dict(max_new_tokens=8, do_sample=False, min_new_tokens=8)


def long_batch(model_type):
    """The long generation input: 2 rows of 4096 tokens, the second padded after 3001."""
    return batch(model_type, LENGTH, 3001, seed=3)


@pytest.fixture(scope="module")
def families(tiny_checkpoint, tmp_path_factory):
    """Every head of every encoder-decoder family converted, with the outputs of the returned models."""
    converted = {}
    for model_type, family in SEQ2SEQ_FAMILIES.items():
        work = tmp_path_factory.mktemp(f"lsg-{model_type}")
        results = {head: convert_tiny(tiny_checkpoint(model_type), work / head, model_type, head)
                   for head in family.heads}
        inputs = {head: head_inputs(model_type, head) for head in family.heads}
        with torch.no_grad():
            expected = {head: tensors(results[head].model(**inputs[head], return_dict=True)) for head in family.heads}
        converted[model_type] = SimpleNamespace(results=results, inputs=inputs, expected=expected, work=work)
    return converted


@pytest.fixture(scope="module")
def remote_runs(families):
    """One fresh Python per family (lsg_export blocked), every head through its Auto class, plus
    greedy and beam generation on a 4096-token padded batch."""
    processes = {}
    for model_type, converted in families.items():
        jobs = {head: {"auto_class": AUTO_CLASSES[head], "folder": str(result.path), "inputs": converted.inputs[head]}
                for head, result in converted.results.items()}
        ids, mask = long_batch(model_type)
        for name, beams in (("greedy", 1), ("beam", 3)):
            jobs[name] = {"auto_class": "AutoModelForSeq2SeqLM",
                          "folder": str(converted.results["ForConditionalGeneration"].path),
                          "inputs": {"input_ids": ids, "attention_mask": mask},
                          "generate": dict(GENERATE, num_beams=beams)}
        processes[model_type] = start_remote(converted.work, jobs)
    yield processes
    for process in processes.values():
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("model_type", FAMILY_NAMES)
def test_heads_and_generation_without_lsg_export(families, remote_runs, model_type):
    prepared, family, process = families[model_type], SEQ2SEQ_FAMILIES[model_type], remote_runs[model_type]
    process.wait(timeout=300)
    assert process.returncode == 0, (prepared.work / "log.txt").read_text()[-3000:]
    remote = torch.load(prepared.work / "results.pt")
    assert remote["lsg_export_importable"] is False and remote["lsg_export_loaded"] is False
    for head, expected in prepared.expected.items():
        got = remote["heads"][head]
        assert got["class"].startswith("transformers_modules.") and got["class"].endswith("." + family.class_name(head))
        assert len(got["outputs"]) == len(expected) > 0, head
        for actual, wanted in zip(got["outputs"], expected):
            assert actual.shape == wanted.shape, head
            assert torch.isfinite(actual).all(), head
            assert max_diff(actual, wanted) <= 1e-6, head
    # generation on 4096 tokens: the fresh process gives the tokens of the model convert returned
    model = prepared.results["ForConditionalGeneration"].model
    ids, mask = long_batch(model_type)
    for name, beams in (("greedy", 1), ("beam", 3)):
        with torch.no_grad():
            tokens = model.generate(input_ids=ids, attention_mask=mask, **GENERATE, num_beams=beams)
        got = remote["heads"][name]["outputs"][0]
        assert tokens.shape[1] >= GENERATE["max_new_tokens"] + 1
        assert torch.equal(got, tokens), name


@pytest.mark.quick
@pytest.mark.parametrize("model_type", FAMILY_NAMES)
def test_converted_folder(families, tiny_checkpoint, model_type):
    family = SEQ2SEQ_FAMILIES[model_type]
    for head, result in families[model_type].results.items():
        config = json.loads((result.path / "config.json").read_text())
        assert config["architectures"] == [family.class_name(head)]
        assert config["max_position_embeddings"] == LENGTH
        assert config["auto_map"][AUTO_CLASSES[head]] == f"{family.module}.{family.class_name(head)}"
        for name in ("lsg_attention.py", "lsg_base.py", "lsg_compat.py", "lsg_seq2seq.py", family.module + ".py"):
            assert (result.path / name).is_file()
    result = families[model_type].results["ForConditionalGeneration"]
    config = json.loads((result.path / "config.json").read_text())
    assert config["pass_global_tokens_to_decoder"] is True and config["block_size"] == TINY_BLOCK_SIZE
    weights = load_file(str(result.path / "model.safetensors"))
    original = load_file(str(tiny_checkpoint(model_type) / "model.safetensors"))
    for side in ("encoder", "decoder"):
        key = f"model.{side}.embed_positions.weight"
        if family.sinusoidal:  # regenerated at the new length: the original table is its first rows
            from transformers.models.pegasus.modeling_pegasus import PegasusSinusoidalPositionalEmbedding
            table = PegasusSinusoidalPositionalEmbedding(LENGTH, 32)
            # the table's own builder: _init_weight fills it in place (4.x), create_weight returns it (5.x)
            if hasattr(table, "create_weight"):
                expected = table.create_weight()
            else:
                table._init_weight()
                expected = table.weight
            assert torch.equal(weights[key], expected.detach())
            assert max_diff(weights[key][:64], original[key]) <= 1e-6
        else:  # tiled, the 2 offset rows kept
            assert weights[key].shape == (LENGTH + 2, 32)
            rows = torch.cat([torch.arange(2), 2 + torch.arange(LENGTH) % 64])
            assert torch.equal(weights[key], original[key][rows])


@pytest.mark.parametrize("model_type", ["bart", "pegasus"])
def test_global_initialisation_rule(tmp_path, model_type):
    """A 1024-row position table: f = 2, s = 32, g = 16; global k = reduced row (k mod 16) * 32 + k // 16
    (table row 2f x that, after the offset rows), + the unscaled shared embedding of bos (k = 0) or mask."""
    config = original_class(model_type, "ForConditionalGeneration").config_class
    checkpoint = tmp_path / "original"
    torch.manual_seed(0)
    settings = tiny_config(model_type).to_dict()
    settings["max_position_embeddings"] = 1024
    original = original_class(model_type, "ForConditionalGeneration")(config.from_dict(settings)).eval()
    original.save_pretrained(checkpoint)
    result = convert_tiny(checkpoint, tmp_path / "lsg", model_type, "ForConditionalGeneration",
                          max_sequence_length=2048)
    offset = SEQ2SEQ_FAMILIES[model_type].table_offset
    table = original.model.encoder.embed_positions.weight.detach()[offset:]
    shared = original.model.shared.weight.detach()
    globals_ = result.model.model.encoder.global_embeddings.weight.detach()
    for k in (0, 1, 15, 16, 17, 511):
        row = 2 * ((k % 16) * 32 + k // 16)
        expected = table[row] + shared[settings["bos_token_id"] if k == 0 else MASK_ID]
        assert max_diff(globals_[k], expected) <= 1e-6, k


def first_token_global(encoder, input_ids):
    """tokens * embed_scale + position 0 of the first token: what the dense encoder sees there."""
    first = input_ids[:1, :1]
    return encoder.token_embeddings(first)[0, 0] + encoder.position_embeddings(first)[0, 0]


@pytest.mark.parametrize("length", [2 * TINY_BLOCK_SIZE, TINY_BLOCK_SIZE + 3])
@pytest.mark.parametrize("model_type", FAMILY_NAMES)
def test_up_to_two_blocks_equals_dense_encoder(families, tiny_checkpoint, model_type, length):
    """mask_first_token + 1 global holding the first token's embedding + globals not passed on: up to 2
    blocks the LSG encoder computes exactly the original dense encoder (padding in one row)."""
    converted = families[model_type].results["ForConditionalGeneration"].model
    model = lsg_variant(converted, mask_first_token=True, num_global_tokens=1, pass_global_tokens_to_decoder=False)
    ids, mask = batch(model_type, length, length - 5, seed=length)
    ids[1, 0] = ids[0, 0]  # one global serves both rows: they must start with the same token
    encoder = model.get_encoder()
    with torch.no_grad():
        encoder.global_embeddings.weight[0] = first_token_global(encoder, ids)
        actual = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        original = original_class(model_type, "ForConditionalGeneration").from_pretrained(
            tiny_checkpoint(model_type), attn_implementation="eager").eval()
        expected = original.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        default = converted.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert actual.shape == expected.shape
    assert max_diff(actual[real], expected[real]) <= 1e-5
    # by default the G = 1 global is passed to the decoder in front of the t tokens
    assert default.shape == (2, length + 1, 32)
    assert max_diff(default[:, 1:][real], expected[real]) > 1e-3


@pytest.mark.parametrize("pass_globals", [True, False])
@pytest.mark.parametrize("model_type", FAMILY_NAMES)
def test_cross_attention_mask_padded_batch(families, model_type, pass_globals):
    """A padded row gives the logits it gives alone: the decoder never attends to the encoder's padding
    (the G global positions in front of the mask are ones). 100 tokens: the LSG block path."""
    model = lsg_variant(families[model_type].results["ForConditionalGeneration"].model, num_global_tokens=3,
                        pass_global_tokens_to_decoder=pass_globals)
    ids, mask = batch(model_type, 100, 70)
    decoder_ids = torch.randint(5, 100, (2, 6), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        both = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids)
        alone = model(input_ids=ids[1:, :70], attention_mask=mask[1:, :70], decoder_input_ids=decoder_ids[1:])
        unmasked = model(input_ids=ids, attention_mask=torch.ones_like(mask), decoder_input_ids=decoder_ids)
    assert both.encoder_last_hidden_state.shape[1] == 100 + 3 * pass_globals
    assert max_diff(both.logits[1], alone.logits[0]) <= 1e-5
    assert max_diff(unmasked.logits[1], alone.logits[0]) > 1e-3  # the padding would change it


def test_reference_checkpoint_adopted_with_resize_lsg(families, tmp_path):
    """A reference-format LSG BART (base_model_prefix 'lsg', auto_map naming absent code) converts again
    with --resize-lsg: globals and options kept, encoder and decoder positions re-tiled."""
    adopted = tmp_path / "adopted"
    remote = "ccdv/lsg-bart-base-4096--modeling_lsg_bart."
    key = "model.encoder.global_embeddings.weight"
    weights = as_reference_checkpoint(families["bart"].results["ForConditionalGeneration"].path, adopted,
                                      {"AutoConfig": remote + "LSGBartConfig",
                                       "AutoModelForSeq2SeqLM": remote + "LSGBartForConditionalGeneration"},
                                      key, pass_global_tokens_to_decoder=False, num_global_tokens=5)

    from lsg_export.cli import main
    output = tmp_path / "resized"
    run = CliRunner().invoke(main, ["convert", str(adopted), "-o", str(output), "--max-sequence-length", "8192",
                                    "--resize-lsg", "--json"])
    assert run.exit_code == 0, run.output
    after = load_file(str(output / "model.safetensors"))
    assert torch.equal(after[key], weights[key])
    for side in ("encoder", "decoder"):
        table = f"model.{side}.embed_positions.weight"
        rows = torch.cat([torch.arange(2), 2 + torch.arange(8192) % LENGTH])
        assert torch.equal(after[table], weights[table][rows])
    new_config = json.loads((output / "config.json").read_text())
    assert new_config["max_position_embeddings"] == 8192 and new_config["num_global_tokens"] == 5
    assert new_config["pass_global_tokens_to_decoder"] is False
    assert new_config["auto_map"]["AutoModelForSeq2SeqLM"] == "modeling_lsg_bart.LSGBartForConditionalGeneration"
