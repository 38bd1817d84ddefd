import functools
import sys


class LSGExportError(Exception):
    """A user error: the CLI prints its one-line message and exits with code 2."""


def first_line(error):
    """An exception as one line: its type and the first line of its message."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300]}" if text else type(error).__name__


def user_errors(command):
    """One clear line and exit code 2 for a user error, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except LSGExportError as error:
            # one line whatever the message (transformers 5's config validation spans several)
            print("error: " + " ".join(str(error).split()), file=sys.stderr)
            sys.exit(2)

    return wrapper
