"""The tiny bart export that test_seq2seq_onnx.py and test_summarise.py share (built once per pytest session), and
the reuse of torch.export's graphs between exports of one model (`reusing_graphs`)."""
import contextlib
import shutil
from pathlib import Path

import pytest

from _tiny import TINY_BLOCK_SIZE

BART_SEQ = 64  # the tiny bart's whole table: the bench's cache exports (at the maximum) share its torch.export graphs
SEQ = 40  # 5 blocks of 8
LENGTHS = [1, 7, 8, 9, 16, 17, 25, SEQ]  # both sides of the 1- and 2-block boundaries
_MADE = {}  # (model folder, seq, attention, opset, device) -> (folder of the graphs, records), for the session


def convert_tiny(checkpoint, output, model_type, head="ForConditionalGeneration", **options):
    from lsg_export import convert
    from lsg_export.families import SEQ2SEQ_FAMILIES
    return convert(str(checkpoint), output, architecture=SEQ2SEQ_FAMILIES[model_type].architecture(head),
                   max_sequence_length=64, block_size=TINY_BLOCK_SIZE, sparse_block_size=TINY_BLOCK_SIZE, **options)


@contextlib.contextmanager
def reusing_graphs(store):
    """pipeline.export_parts (torch.export of the three graphs, ~10 s each time) run once per model, --seq,
    attention, opset and device in this session; a later export with the same five gets copies of its graphs, then
    does its own optimisation, quantisation, merge and validation. Yields the keys exported for real."""
    from lsg_export.onnx import pipeline
    if getattr(pipeline.export_parts, "reusing", False):  # already inside one
        yield _MADE
        return
    real = pipeline.export_parts

    def export_parts(parts, info, folder, seq, kind, opset, status, device="cpu"):
        key = (str(Path(info.path).resolve()), seq, kind.name, opset, device)
        files = [part.file for part in parts]
        if key not in _MADE:
            records = real(parts, info, folder, seq, kind, opset, status, device)
            keep = Path(store) / str(len(_MADE))
            keep.mkdir(parents=True)
            for file in files:
                shutil.copy(folder / file, keep / file)
            _MADE[key] = (keep, records)
        keep, records = _MADE[key]
        for file in files:
            shutil.copy(keep / file, folder / file)
        return dict(records)

    export_parts.reusing = True
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "export_parts", export_parts)
        yield _MADE


@pytest.fixture(scope="session")
def graph_store(tmp_path_factory):
    return tmp_path_factory.mktemp("graphs")


@pytest.fixture(scope="session")
def tiny_bart_export(tiny_checkpoint, tmp_path_factory, graph_store):
    """The tiny LSG bart (1 global passed to the decoder, norm) exported at BART_SEQ with the merged decoder and
    validated at LENGTHS: (ConvertResult, export folder, export.json)."""
    from lsg_export.onnx import export_onnx
    work = tmp_path_factory.mktemp("seq2seq-bart")
    bart = convert_tiny(tiny_checkpoint("bart"), work / "lsg-bart", "bart")
    with reusing_graphs(graph_store):
        result = export_onnx(str(bart.path), work / "bart-onnx", seq=BART_SEQ, lengths=LENGTHS)
    return bart, result.path, result.info


WORDS = [f"w{i}" for i in range(95)]  # + 5 special tokens = the tiny config's vocabulary of 100
# a BART-CNN-like generation config (its keys, small numbers): what a summariser export carries
SUMMARY_GENERATION = {"decoder_start_token_id": 2, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
                      "forced_bos_token_id": 0, "forced_eos_token_id": 2, "num_beams": 3, "max_length": 16,
                      "min_length": 4, "length_penalty": 2.0, "no_repeat_ngram_size": 3, "early_stopping": True}


def save_bart_tokenizer(folder):
    """A word-level fast tokenizer of the tiny vocabulary with bart's special tokens (<s> 0, <pad> 1, </s> 2,
    <unk> 3, <mask> 4) and template (<s> text </s>), saved as transformers saves one."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = {token: i for i, token in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>"] + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0),
                                                                                                  ("</s>", 2)])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>", mask_token="<mask>").save_pretrained(folder)


def texts(count, seed=0, longest=40):
    """Random sentences of the tiny vocabulary, 1..`longest` words."""
    import random
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, longest))) for _ in range(count)]


@pytest.fixture(scope="session")
def summariser_export(tiny_bart_export, tmp_path_factory):
    """A copy of the tiny bart export with a tokenizer and a summariser's generation config:
    (ConvertResult, export folder)."""
    import json
    converted, folder, _ = tiny_bart_export
    out = tmp_path_factory.mktemp("summariser") / "bart-summariser"
    shutil.copytree(folder, out)
    save_bart_tokenizer(out)
    (out / "generation_config.json").write_text(json.dumps(SUMMARY_GENERATION))
    return converted, out
