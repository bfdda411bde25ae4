"""The example site's settings with agentapp's socket outbox merging nothing: one frame per text delta.

Benchmark 1's per-delta agentapp case (``DJANGO_SETTINGS_MODULE=bench.settings_unmerged``), compared with the
bare consumer sending one frame per delta. It replaces ``agentapp.outbox._Queued.merge`` in the server process
only; it fails loudly when that internal is gone, rather than measuring merged frames under the wrong name.
"""

from typing import Any

from django.core.exceptions import ImproperlyConfigured

from agentapp import outbox
from project.settings import *  # noqa: F403

if not callable(getattr(getattr(outbox, "_Queued", None), "merge", None)):
    raise ImproperlyConfigured("bench.settings_unmerged: agentapp.outbox._Queued.merge is gone; update the patch")


def _merge_nothing(self: Any, frame: dict[str, Any]) -> bool:
    """Never join a delta to the frame before it."""
    return False


outbox._Queued.merge = _merge_nothing
