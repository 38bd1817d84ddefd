"""Summarisers end to end: decoding.py's loop (the one of `lsg-export serve` and of the Triton repository's python
model) gives transformers' generate() tokens on the tiny bart export, greedy and beam search, merged and split
decoders; `serve` answers the generate extension and v2 infer with the PyTorch model's summary and refuses bad
input with a 4xx while it keeps serving; `deploy` writes the graph models, the python model and the manifest.

The export is the session's tiny bart (_seq2seq_exports.py, shared with test_seq2seq_onnx.py), copied with a
word-level tokenizer and a summariser's generation config."""
import json

import numpy as np
import pytest
import torch

from _seq2seq_exports import texts

pytest.importorskip("kserve")


def reference(converted, folder, batch, **overrides):
    """transformers' generate() on the PyTorch model with the export's generation config: (token ids, texts)."""
    from transformers import AutoTokenizer, GenerationConfig
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokens = tokenizer(batch, padding=True, return_tensors="pt")
    config = GenerationConfig.from_pretrained(str(folder))
    with torch.no_grad():
        ids = converted.model.eval().generate(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                                              generation_config=config, **overrides)
    return ids.numpy(), tokenizer.batch_decode(ids, skip_special_tokens=True)


def ort_loop(folder, merged):
    """(encode, decoder, codec, settings) of decoding.py on ONNX Runtime sessions of the export's graphs."""
    import onnxruntime as ort

    from lsg_export.deploy.decoding import GenerationSettings, GraphDecoder, TextCodec
    sessions = {name: ort.InferenceSession(str(folder / f"{file}.onnx"), providers=["CPUExecutionProvider"])
                for name, file in (("encoder", "encoder_model"), ("decoder", "decoder_model"),
                                   ("decoder_with_past", "decoder_with_past_model"),
                                   ("decoder_merged", "decoder_model_merged"))}

    def run(graph, feeds):
        session = sessions[graph]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, {i.name: feeds[i.name] for i in session.get_inputs()})))

    def encode(ids, mask):
        return sessions["encoder"].run(None, {"input_ids": ids, "attention_mask": mask})[0]

    config = json.loads((folder / "config.json").read_text())
    heads = config["decoder_attention_heads"]
    decoder = GraphDecoder(run, config["decoder_layers"], heads, config["d_model"] // heads, merged)
    settings = GenerationSettings.from_folder(folder).check()
    return encode, decoder, TextCodec(folder, settings.pad_token_id, 64), settings


LOOP_CASES = [  # (request overrides, generation config changes)
    ({"num_beams": 1}, {}),
    ({"num_beams": 1, "max_new_tokens": 9}, {"no_repeat_ngram_size": 0, "forced_bos_token_id": None}),
    ({}, {}),  # the export's: 3 beams, length penalty 2, early stopping, no 3-gram twice, min length 4
    ({"num_beams": 4}, {"early_stopping": False, "length_penalty": 1.0}),
    ({"num_beams": 2, "max_new_tokens": 12}, {"early_stopping": "never", "length_penalty": 0.5, "min_length": 0}),
]


@pytest.mark.quick
@pytest.mark.parametrize("merged", [True, False], ids=["merged", "split"])
def test_loop_generates_pytorch_tokens(summariser_export, merged, tmp_path):
    """The numpy loop on the graphs gives generate()'s tokens and text for texts across the block boundaries (a
    padded batch), greedy and beam search, under each early-stopping mode and the generation config's processors."""
    import shutil

    from lsg_export.deploy.decoding import generate
    converted, export = summariser_export
    batch = texts(3, seed=4) + ["w1 w2 w3 w4 w5 w6 w7"]
    for overrides, changes in LOOP_CASES:
        folder = export
        if changes:
            folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
            shutil.copytree(export, folder)
            generation = json.loads((export / "generation_config.json").read_text())
            generation.update(changes)
            (folder / "generation_config.json").write_text(json.dumps({k: v for k, v in generation.items()
                                                                       if v is not None}))
        encode, decoder, codec, settings = ort_loop(folder, merged)
        expected_ids, expected_texts = reference(converted, folder, batch, **overrides)
        ids, mask = codec.encode(batch)
        got = generate(encode, decoder, ids, mask, settings.override(**overrides))
        assert got.shape == expected_ids.shape and np.array_equal(got, expected_ids), (overrides, changes, got,
                                                                                        expected_ids)
        assert codec.decode(got) == expected_texts
