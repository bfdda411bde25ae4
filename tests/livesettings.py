"""Settings of a test's own for live servers: the example site's, with some ``AGENTAPP`` values changed."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any


def agentapp_settings(tmp_dir: Path, **values: Any) -> dict[str, str]:
    """Environment for a server (and its manage.py) using the example site's settings with ``values`` in AGENTAPP."""
    name = f"agentapp_live_settings_{secrets.token_hex(4)}"
    module = f"from project.settings import *  # noqa: F403\n\nAGENTAPP = {{**AGENTAPP, **{values!r}}}  # noqa: F405\n"
    (tmp_dir / f"{name}.py").write_text(module, encoding="utf-8")
    path = os.pathsep.join(filter(None, [str(tmp_dir), os.environ.get("PYTHONPATH")]))
    return {"DJANGO_SETTINGS_MODULE": name, "PYTHONPATH": path}
