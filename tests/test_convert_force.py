"""`convert --force` over an existing folder (issue 19): it replaces what a conversion writes, keeps
everything else (an onnx/ export, the user's files) and says which before replacing; a conversion
that fails leaves the old folder as it was."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import TINY_BLOCK_SIZE
from lsg_export import convert
from lsg_export.cli import main

SMALL = dict(block_size=TINY_BLOCK_SIZE, sparse_block_size=TINY_BLOCK_SIZE, max_sequence_length=128)
SMALL_ARGS = ["--block-size", str(TINY_BLOCK_SIZE), "--sparse-block-size", str(TINY_BLOCK_SIZE),
              "--max-sequence-length", "128"]


def snapshot(folder):
    """{relative path: bytes} of every file under `folder`."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture
def converted_with_extras(tiny_bert, tmp_path):
    """A converted folder that also holds what convert did not write (an onnx/ export, a bench export,
    a user file) and a tokenizer file of a previous conversion (the tiny bert has no tokenizer)."""
    out = tmp_path / "workspace" / "out"
    convert(str(tiny_bert), out, **SMALL)
    (out / "onnx").mkdir()
    (out / "onnx" / "model.onnx").write_bytes(b"graph of the first weights")
    (out / "onnx" / "export.json").write_text('{"seq": 128}')
    (out / "bench-exports" / "ort-gather").mkdir(parents=True)
    (out / "bench-exports" / "ort-gather" / "model.onnx").write_bytes(b"bench graph")
    (out / "notes.txt").write_text("mine")
    (out / "vocab.txt").write_text("[PAD]\n")
    return out


KEPT = ("onnx/model.onnx", "onnx/export.json", "bench-exports/ort-gather/model.onnx", "notes.txt")


def test_force_keeps_what_convert_did_not_write(tiny_bert, converted_with_extras):
    out = converted_with_extras
    before = snapshot(out)
    result = CliRunner().invoke(main, ["convert", str(tiny_bert), "-o", str(out), *SMALL_ARGS, "--force",
                                       "--sparsity-type", "pooling"])
    assert result.exit_code == 0, result.output
    after = snapshot(out)
    assert {name: after[name] for name in KEPT} == {name: before[name] for name in KEPT}
    assert "vocab.txt" not in after  # a file a conversion writes, left by the previous one: replaced
    assert json.loads(after["config.json"])["sparsity_type"] == "pooling"  # the new conversion
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no temporary or set-aside folder left

    notice = result.stderr.splitlines()[0]
    assert notice.startswith(f"--force: replacing what convert wrote in {out} (")
    for name in ("config.json", "model.safetensors", "modeling_lsg_bert.py", "README.md", "vocab.txt"):
        assert name in notice.split("; keeping")[0]
    kept = notice.split("; keeping")[1]
    assert "(bench-exports/, notes.txt, onnx/)" in kept
    assert "the ONNX exports in bench-exports/, onnx/ are of the previous weights: export again" in kept


@pytest.mark.quick
def test_force_says_it_before_replacing(tiny_bert, converted_with_extras):
    """The notice comes while the old folder is still whole (the old weights, the stale file)."""
    out = converted_with_extras
    before = snapshot(out)
    seen = []
    convert(str(tiny_bert), out, **SMALL, force=True, seed=7, notice=lambda message: seen.append(snapshot(out)))
    assert seen == [before]
    assert snapshot(out)["model.safetensors"] != before["model.safetensors"]  # seed 7: other global embeddings


def test_force_over_a_folder_of_convert_files_only(tiny_bert, tmp_path):
    out = tmp_path / "out"
    convert(str(tiny_bert), out, **SMALL)
    messages = []
    convert(str(tiny_bert), out, **SMALL, force=True, notice=messages.append)
    assert len(messages) == 1 and "keeping" not in messages[0]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "model.safetensors", "README.md", "lsg_attention.py", "lsg_base.py", "lsg_compat.py",
         "modeling_lsg_bert.py"])


def test_existing_empty_folder_is_no_replacement(tiny_bert, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    messages = []
    convert(str(tiny_bert), out, **SMALL, notice=messages.append)
    assert messages == [] and (out / "model.safetensors").is_file()


def test_failed_load_with_force_leaves_the_old_folder(tiny_bert, converted_with_extras):
    out = converted_with_extras
    before = snapshot(out)
    result = CliRunner().invoke(main, ["convert", str(tiny_bert), "-o", str(out), *SMALL_ARGS, "--force",
                                       "--model-kwargs", '{"num_attention_heads": 5}'])
    assert result.exit_code == 2 and "cannot load the weights" in result.stderr
    assert snapshot(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]


def test_failed_write_with_force_leaves_the_old_folder(tiny_bert, converted_with_extras, monkeypatch):
    """A failure while the new folder is half-written (the weights are, the model card is not)."""
    import importlib
    module = importlib.import_module("lsg_export.convert")  # the package's `convert` is the function

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    out = converted_with_extras
    before = snapshot(out)
    monkeypatch.setattr(module, "model_card", disk_full)
    with pytest.raises(OSError, match="No space left"):
        convert(str(tiny_bert), out, **SMALL, force=True, seed=7, notice=lambda message: None)
    assert snapshot(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]


def test_failed_swap_puts_the_old_folder_back(tiny_bert, converted_with_extras, monkeypatch):
    """The last step, the new folder renamed into place, fails after the kept entries were moved into
    it: they go back, and so does the old folder."""
    out = converted_with_extras
    before = snapshot(out)
    rename = Path.rename

    def failing_rename(self, target):
        if Path(target) == out and self.name.startswith(".out.") and not self.name.endswith(".old"):
            raise OSError(5, "Input/output error")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError, match="Input/output error"):
        convert(str(tiny_bert), out, **SMALL, force=True, seed=7, notice=lambda message: None)
    assert snapshot(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]


def test_force_replaces_the_sentence_transformers_files(tiny_bert, tmp_path):
    """A sentence-transformers checkpoint: its modules.json, settings and 1_Pooling/ are convert's, replaced by
    the next conversion (max_seq_length its length), not kept as the user's."""
    import shutil

    from _onnx_cases import write_sentence_pipeline
    source = tmp_path / "st-bert"
    shutil.copytree(tiny_bert, source)
    write_sentence_pipeline(source, "cls", True)
    out = tmp_path / "out"
    convert(str(source), out, **SMALL)
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 128
    (out / "1_Pooling" / "stale.json").write_text("{}")
    notices = []
    convert(str(source), out, **{**SMALL, "max_sequence_length": 96}, force=True, notice=notices.append)
    assert "keeping" not in notices[0] and "1_Pooling/" in notices[0] and "modules.json" in notices[0]
    assert not (out / "1_Pooling" / "stale.json").exists()
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_cls_token"]
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 96
    assert "library_name: sentence-transformers" in (out / "README.md").read_text()
