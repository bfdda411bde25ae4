"""The example site's settings with the stamped agent (``bench.stamped``), for benchmark 4's paced servers."""

from project.settings import *  # noqa: F403
from project.settings import AGENTAPP

AGENTAPP = {**AGENTAPP, "AGENT_FACTORY": "bench.stamped.build_agent"}
