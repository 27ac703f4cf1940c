"""Silence third-party converters that log advice on the root logger (onnxruntime's quantizer and fp16 converter)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_root_logger(*, ignore_warnings: bool = False) -> Iterator[None]:
    """Raise the root logger to ERROR for the block (and optionally ignore Python warnings), then restore it."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            if ignore_warnings:
                warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)
