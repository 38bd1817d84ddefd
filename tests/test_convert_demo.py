"""scripts/demo.sh runs its whole document (issue 19: it said 6.8k tokens and ran 4096), and
scripts/run_document.py says how much of a document it runs."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_BLOCK_SIZE
from lsg_export import convert
from test_convert_global_tokens import save_word_tokenizer

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def demo_default(name):
    """The default of `NAME=${NAME:-value}` in demo.sh."""
    return re.search(rf"^{name}=\$\{{{name}:-(.+)\}}$", (SCRIPTS / "demo.sh").read_text(), re.M).group(1)


def test_demo_length_holds_its_document(minilm_path):
    from transformers import AutoTokenizer
    document = Path(demo_default("DOCUMENT"))
    if not document.is_file():
        pytest.skip(f"{document} is not on this machine")
    tokens = len(AutoTokenizer.from_pretrained(minilm_path)(document.read_text(), verbose=False)["input_ids"])
    assert tokens == 6842  # what demo.sh says it runs
    assert int(demo_default("LENGTH")) >= tokens


@pytest.fixture(scope="module")
def tiny_with_tokenizer(tiny_bert, tmp_path_factory):
    """The tiny bert with a whitespace tokenizer (no special tokens added), converted to 128 tokens."""
    import shutil
    source = save_word_tokenizer(shutil.copytree(tiny_bert, tmp_path_factory.mktemp("source") / "tiny"))
    out = tmp_path_factory.mktemp("converted") / "lsg-tiny"
    convert(str(source), out, block_size=TINY_BLOCK_SIZE, sparse_block_size=TINY_BLOCK_SIZE, max_sequence_length=128)
    return out


@pytest.mark.parametrize("words, expected", [
    (100, ": all 100 tokens"),
    (300, ": its first 128 of 300 tokens (the model's maximum)"),
])
def test_run_document_says_what_it_runs(tiny_with_tokenizer, tmp_path, words, expected):
    document = tmp_path / "document.txt"
    document.write_text(" ".join(f"w{5 + i % 90}" for i in range(words)))
    result = subprocess.run([sys.executable, str(SCRIPTS / "run_document.py"), str(tiny_with_tokenizer),
                             str(document)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"running {tiny_with_tokenizer} on {document}{expected}"
    assert f": {min(words, 128)} tokens -> (1, {min(words, 128)}, 32) in " in lines[1]
