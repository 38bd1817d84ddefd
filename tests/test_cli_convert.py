"""`lsg-export convert` on the command line: user errors are one 'error:' line, exit code 2, no
traceback, and nothing written; a good conversion writes the folder and says where."""
import json
import shutil

import pytest
import transformers
from click.testing import CliRunner

from conftest import TINY_BLOCK_SIZE
from lsg_export.cli import main

# transformers 5 validates config values by type (huggingface_hub strict dataclasses); 4.x does not
_STRICT_CONFIGS = int(transformers.__version__.split(".")[0]) >= 5

# small, valid options for the tiny bert (64 positions), so that only the option under test is wrong
SMALL = ["--block-size", str(TINY_BLOCK_SIZE), "--sparse-block-size", str(TINY_BLOCK_SIZE),
         "--max-sequence-length", "128"]


def invoke(*args):
    return CliRunner().invoke(main, ["convert", *map(str, args)])


def assert_user_error(result, *fragments):
    """Exit code 2 and exactly one line on stderr, starting with 'error:' (or click's own usage error)."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # not an uncaught exception
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def workspace(tmp_path):
    """An empty folder holding the output: after a failure it must still be empty (no output, no
    half-written temporary folder)."""
    folder = tmp_path / "workspace"
    folder.mkdir()
    return folder


def assert_nothing_written(workspace, lsg_home):
    assert sorted(p.name for p in workspace.iterdir()) == []
    assert not (lsg_home / "last-outputs.json").exists()


@pytest.mark.parametrize("options, fragment", [
    (["--architecture", "RobertaForMaskedLM"], "not available for bert"),
    (["--architecture", "BertLMHeadModel"], "not available for bert"),
    (["--block-size", "10", "--sparsity-factor", "4"], "multiple of sparsity_factor"),
    (["--block-size", "12", "--sparsity-factor", "4"], "must be even"),  # 12/4 = 3
    (["--block-size", "6", "--sparsity-factor", "2"], "must be even"),
    (["--block-size", "0"], "block_size"),
    (["--block-size", "-8"], "block_size"),
    (["--sparse-block-size", "-1"], "sparse_block_size"),
    (["--sparsity-factor", "0"], "sparsity_factor"),
    (["--sparsity-factor", "-2"], "sparsity_factor"),
    (["--max-sequence-length", "0"], "--max-sequence-length"),
    (["--max-sequence-length", "-128"], "--max-sequence-length"),
    (["--global-positional-stride", "0"], "stride"),
    (["--global-positional-stride", "3"], "stride"),
    (["--num-global-tokens", "0"], "num_global_tokens"),
    (["--num-global-tokens", "513"], "num_global_tokens"),
    (["--block-size", "16", "--sparse-block-size", "12"], "chunks"),  # norm: 12 does not divide 16
    (["--model-kwargs", '{"sparsity_type": "bogus"}'], "unknown sparsity_type"),
    (["--model-kwargs", '{"block_size": "8"}'], "block_size"),
    (["--model-kwargs", "{not json"], "--model-kwargs"),
    (["--model-kwargs", "[1, 2]"], "--model-kwargs"),
    (["--model-kwargs", '{"position_embedding_type": "relative_key"}'], "absolute"),
    (["--max-sequence-length", "32"], "below the model's length (64)"),
    (["--max-sequence-length", "100000000"], "above"),
    (["--model-kwargs", '{"num_attention_heads": 5}'], "cannot load the weights"),  # 32 is no multiple of 5
    # a value of the wrong type: transformers 4.x fails loading the weights, 5.x validating the config
    (["--model-kwargs", '{"hidden_size": "x"}'], "hidden_size" if _STRICT_CONFIGS else "cannot load the weights"),
])
def test_bad_options(tiny_bert, workspace, lsg_home, options, fragment):
    # the valid SMALL options first: a later repetition of an option wins
    result = invoke(tiny_bert, "-o", workspace / "out", *SMALL, *options)
    assert_user_error(result, fragment)
    assert_nothing_written(workspace, lsg_home)


def assert_usage_error(result, fragment):
    """click's own usage error (a few lines ending in 'Error: ...'): exit code 2 too, no traceback."""
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ") and fragment in result.stderr


def test_unknown_sparsity_type_option_is_a_usage_error(tiny_bert, workspace, lsg_home):
    """--sparsity-type is a click Choice, so a bad value is refused by click itself."""
    result = invoke(tiny_bert, "-o", workspace / "out", "--sparsity-type", "bogus")
    assert_usage_error(result, "Invalid value for '--sparsity-type'")
    assert_nothing_written(workspace, lsg_home)


# --- bad sources ----------------------------------------------------------------------------------

def copy_checkpoint(source, target, config_text=None, drop=(), weights=None):
    """A copy of `source` with config.json replaced, files dropped or model.safetensors replaced."""
    shutil.copytree(source, target)
    if config_text is not None:
        (target / "config.json").write_text(config_text)
    for name in drop:
        (target / name).unlink()
    if weights is not None:
        (target / "model.safetensors").write_bytes(weights)
    return target


def unsupported(model_type):
    return lambda tiny, target: copy_checkpoint(tiny, target, json.dumps({"model_type": model_type, "n_embd": 32}))


BAD_SOURCES = {
    "gpt2": (unsupported("gpt2"), "model type 'gpt2' is not supported"),
    "deberta": (unsupported("deberta-v2"), "model type 'deberta-v2' is not supported"),
    "no-model-type": (lambda tiny, target: copy_checkpoint(tiny, target, "{}"), "not supported"),
    "missing-folder": (lambda tiny, target: target, "no such folder"),
    "no-config": (lambda tiny, target: copy_checkpoint(tiny, target, drop=["config.json"]), "no config.json"),
    "no-weights": (lambda tiny, target: copy_checkpoint(tiny, target, drop=["model.safetensors"]), "no weights"),
    "corrupt-config": (lambda tiny, target: copy_checkpoint(tiny, target, '{"model_type": "bert", '), "config.json"),
    "config-not-an-object": (lambda tiny, target: copy_checkpoint(tiny, target, "[1, 2]"), "config.json"),
    "corrupt-weights": (lambda tiny, target: copy_checkpoint(tiny, target, weights=b"not safetensors"),
                        "cannot load the weights"),
    "truncated-weights": (lambda tiny, target: copy_checkpoint(
        tiny, target, weights=(tiny / "model.safetensors").read_bytes()[:4000]), "cannot load the weights"),
}


@pytest.mark.quick
@pytest.mark.parametrize("case", list(BAD_SOURCES))
def test_bad_sources(tiny_bert, tmp_path, workspace, lsg_home, case):
    make, fragment = BAD_SOURCES[case]
    source = make(tiny_bert, tmp_path / f"source-{case}")
    result = invoke(source, "-o", workspace / "out", *SMALL)
    assert_user_error(result, fragment)
    assert_nothing_written(workspace, lsg_home)


def test_output_is_a_file(tiny_bert, workspace, lsg_home):
    (workspace / "out").write_text("a file")
    assert_usage_error(invoke(tiny_bert, "-o", workspace / "out", *SMALL), "is a file")  # click.Path(file_okay=False)
    assert (workspace / "out").read_text() == "a file"


# --- existing output, success ---------------------------------------------------------------------

@pytest.mark.quick
def test_existing_output_needs_force(tiny_bert, workspace, lsg_home):
    out = workspace / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_user_error(invoke(tiny_bert, "-o", out, *SMALL), "--force")
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in workspace.iterdir()) == ["out"]  # no temporary folder left

    result = invoke(tiny_bert, "-o", out, *SMALL, "--force")
    assert result.exit_code == 0, result.output
    # --force replaces what a conversion writes and keeps the user's file, saying so
    assert (out / "keep.txt").read_text() == "mine" and (out / "config.json").is_file()
    assert "keeping what it did not write (keep.txt)" in result.stderr
    assert sorted(p.name for p in workspace.iterdir()) == ["out"]


@pytest.mark.quick
def test_convert_json(tiny_bert, workspace, lsg_home):
    out = workspace / "lsg-tiny"
    result = invoke(tiny_bert, "-o", out, *SMALL, "--sparsity-type", "pooling", "--num-global-tokens", "3", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report == {"output": str(out), "architecture": "LSGBertForPreTraining", "source": str(tiny_bert)}
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "lsg_attention.py", "lsg_base.py",
            "modeling_lsg_bert.py"} <= names
    config = json.loads((out / "config.json").read_text())
    assert (config["block_size"], config["sparsity_type"], config["num_global_tokens"]) == (8, "pooling", 3)
    assert config["max_position_embeddings"] == 128
    # the 'last output' state went to LSG_EXPORT_HOME (the test's folder), not the user's home
    state = json.loads((lsg_home / "last-outputs.json").read_text())
    assert str(out.resolve()) in state["convert"].values()


def test_the_python_api_remembers_nothing(tiny_bert, workspace, lsg_home, monkeypatch):
    """The last output is the command line's memory: convert() from Python records nothing, and the API
    functions that take a folder need it named."""
    from lsg_export import convert
    from lsg_export.bench import run_bench
    from lsg_export.deploy import deploy
    from lsg_export.onnx import export_onnx, validate_onnx

    monkeypatch.chdir(workspace)
    result = convert(str(tiny_bert), "lsg-tiny", max_sequence_length=128, block_size=TINY_BLOCK_SIZE,
                     sparse_block_size=TINY_BLOCK_SIZE)
    assert result.path.name == "lsg-tiny" and (workspace / "lsg-tiny" / "config.json").is_file()
    assert not (lsg_home / "last-outputs.json").exists()
    for function in (export_onnx, validate_onnx, deploy, run_bench):
        with pytest.raises(TypeError, match="missing 1 required positional argument"):
            function()
    # so the command line has no default here: its next command must name the folder
    assert_user_error(CliRunner().invoke(main, ["onnx"]), "`lsg-export convert` has written nothing", "name a folder")


def test_default_output_name(tiny_bert, tmp_path):
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=tmp_path) as cwd:
        result = runner.invoke(main, ["convert", str(tiny_bert), *SMALL])
        assert result.exit_code == 0, result.output
        expected = f"lsg-{tiny_bert.name}-128"
        assert expected in result.stderr
        assert (tmp_path / cwd / expected / "config.json").is_file()
