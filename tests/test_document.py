"""The validation's and the bench's document: word pieces framed by the tokenizer's special tokens."""
import torch

from lsg_export.onnx.validate import Document, text_ids


def test_rows_are_framed_and_continue_the_document():
    document = Document(tuple(range(10, 17)), (1,), (2,))
    rows = document.rows(2, 5)
    # row r holds pieces r * 3 .. r * 3 + 2: the 3 between its [CLS] and [SEP]
    assert rows.tolist() == [[1, 10, 11, 12, 2], [1, 13, 14, 15, 2]]
    assert document.rows(1, 10).tolist() == [[1, 10, 11, 12, 13, 14, 15, 16, 10, 2]]  # wraps round
    assert document.rows(2, 2).tolist() == [[10, 11], [12, 13]]  # no room for a piece inside the frame
    assert Document((5, 6)).rows(1, 3).tolist() == [[5, 6, 5]]
    assert rows.dtype == torch.long


def test_text_ids_frame_as_the_tokenizer_encodes(minilm_path, tmp_path):
    from transformers import AutoTokenizer
    text = tmp_path / "doc.txt"
    text.write_text("Long documents need long models. " * 20)
    document = text_ids(minilm_path, text)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    encoded = tokenizer(text.read_text())["input_ids"]
    assert document.prefix == (tokenizer.cls_token_id,) and document.suffix == (tokenizer.sep_token_id,)
    assert list(document.pieces) == encoded[1:-1]
    assert document.rows(1, len(encoded)).tolist() == [encoded]
