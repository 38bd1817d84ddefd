"""Quiet loading: transformers' log lines and warnings silenced while a model or tokenizer loads."""
import warnings
from contextlib import contextmanager


@contextmanager
def quiet_transformers():
    from transformers.utils import logging
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logging.set_verbosity(level)
