"""What a person at a terminal sees: a line per phase of the work and the warnings that matter.

The libraries underneath speak to a developer: transformers' load report for the task head a
fine-tune is meant to add, progress bars for a one-line `predict`, deprecation notices, a kernel
hub's offline notice. The CLI hides those unless `--verbose`; a run's `logs/train.log` keeps them.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

HANDLER_NAME = "nlptasks-console"
QUIET_LIBRARIES = (
    *("transformers", "datasets", "peft", "kernels", "huggingface_hub", "accelerate", "bitsandbytes"),
    *("torch", "onnxruntime", "onnxscript"),
)


def configure(verbose: bool) -> None:
    """Show nlptasks' own lines on stderr; below errors, the libraries speak only when `verbose`."""
    ours = logging.getLogger("nlptasks")
    for old in [h for h in ours.handlers if h.get_name() == HANDLER_NAME]:
        ours.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(HANDLER_NAME)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(message)s"))
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    if verbose:
        return
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.disable_progress_bar()
    for name in QUIET_LIBRARIES:
        library = logging.getLogger(name)
        library.setLevel(max(library.getEffectiveLevel(), logging.ERROR))
        for terminal in [h for h in library.handlers if _writes_to_terminal(h)]:
            terminal.setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _writes_to_terminal(handler: logging.Handler) -> bool:
    """A library's own console handler, not a file's or a test harness's that someone else attached."""
    stream = getattr(handler, "stream", None)
    return not isinstance(handler, logging.FileHandler) and stream in (sys.stderr, sys.__stderr__, sys.stdout)


@contextlib.contextmanager
def logging_to(path: Path) -> Iterator[None]:
    """Send this run's full log to its own file while it runs; the console keeps showing warnings only.

    The handler goes when the run ends, so nothing a process logs later lands in a finished run's file.
    """
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in ("nlptasks", "transformers")]
    for logger in loggers:
        for console in logger.handlers:
            if console.level == logging.NOTSET:
                console.setLevel(logging.WARNING)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()
