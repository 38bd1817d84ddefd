import functools
import sys


class LSGExportError(Exception):
    """A user error: the CLI prints its one-line message and exits with code 2."""


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
