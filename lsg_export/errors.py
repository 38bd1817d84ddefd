class LSGExportError(Exception):
    """A user error: the CLI prints its one-line message and exits with code 2."""
