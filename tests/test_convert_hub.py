"""The offline hub error names the download command the installed huggingface_hub has (issue 19:
it named `huggingface-cli`, which huggingface_hub 1.0 no longer installs)."""
from importlib.metadata import distribution

import pytest
from click.testing import CliRunner

from lsg_export.cli import main
from lsg_export.sources import hub_download_command


def installed_programs():
    return {entry.name for entry in distribution("huggingface_hub").entry_points if entry.group == "console_scripts"}


@pytest.mark.quick
def test_offline_error_names_an_installed_command(tmp_path):
    result = CliRunner().invoke(main, ["convert", "some-org/not-downloaded-model", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot fetch 'some-org/not-downloaded-model'")
    # the command named is one the installed huggingface_hub provides, the new one where there is
    expected = "hf" if "hf" in installed_programs() else "huggingface-cli"
    assert f"({expected} download some-org/not-downloaded-model --local-dir DIR)" in lines[0]
    assert expected in installed_programs()


@pytest.mark.parametrize("version, command", [
    ("0.20.3", "huggingface-cli download"), ("0.33.5", "huggingface-cli download"),
    ("0.34.0", "hf download"), ("0.36.2", "hf download"), ("1.0.0", "hf download"), ("1.13.0rc1", "hf download"),
])
def test_download_command_by_version(version, command):
    assert hub_download_command(version) == command
