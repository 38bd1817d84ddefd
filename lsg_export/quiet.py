"""Quiet loading: transformers' log lines, warnings and progress bars silenced while a model or tokenizer
loads (transformers 5 draws a weight-loading bar on stderr, which would break the one-line error contract)."""
import warnings
from contextlib import contextmanager


@contextmanager
def quiet_transformers():
    from transformers.utils import logging
    level = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logging.set_verbosity(level)
            if bars:
                logging.enable_progress_bar()
