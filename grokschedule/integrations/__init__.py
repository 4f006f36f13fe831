"""GrokScheduler's policy as callbacks for trainers people already use: Hugging Face's
``transformers.Trainer`` (``hf``, extra ``grokschedule[hf]``) and Lightning (``lightning``,
extra ``grokschedule[lightning]``). They import core, training and tracking, never Ray.

The names below load their framework only when first used, so ``import grokschedule`` (and this
package) never needs transformers or lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "GrokTrainerCallback": "grokschedule.integrations.hf",
    "GrokMetricsCallback": "grokschedule.integrations.hf",
    "GrokLightningCallback": "grokschedule.integrations.lightning",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
