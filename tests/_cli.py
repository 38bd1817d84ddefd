"""Shared helpers of the CLI tests: run `lsg-export` in-process, check a user error."""
from click.testing import CliRunner

from lsg_export.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_user_error(result, *fragments):
    """Exit code 2, no traceback, exactly one line on stderr starting with 'error:' holding each fragment."""
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit)  # not an uncaught exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
