"""Quiet output: third-party deprecation chatter is filtered at every entry point.

fbgemm, torchrec and torch.fx warn at import time about things a user of the engine cannot act
on; each entry point (the CLI, the background processes, the benchmarks) calls
:func:`quiet_third_party_noise` first, and the child processes it starts inherit the filter.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

CHILD_FILTERS = "ignore::DeprecationWarning,ignore::FutureWarning"
_show_warning = warnings.showwarning


def _unless_noise(message: Any, category: type[Warning], filename: str, lineno: int, *rest: Any) -> None:
    """Feast puts its own "once" filter for DeprecationWarning in front of ours when imported,
    so the noise is also dropped where warnings are shown, whatever the filters say."""
    if issubclass(category, (DeprecationWarning, FutureWarning)) or (issubclass(category, UserWarning)
                                                                      and "torchrec" in filename):
        return
    _show_warning(message, category, filename, lineno, *rest)


def quiet_third_party_noise() -> None:
    """Drop deprecation and future warnings here and in every Python child process."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torchrec.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.showwarning = _unless_noise
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    if "PYTHONWARNINGS" not in os.environ:
        os.environ["PYTHONWARNINGS"] = CHILD_FILTERS


__all__ = ["quiet_third_party_noise"]
