"""Run the real daemon with the tests' ProcessRunner in place of the Docker runner.

    python -m tests.agent_main CONFIG_TOML

Everything but the runner is what `calctra-agent run` assembles: settings, state, agent
token, wallet, probe, API client, signals.
"""

from __future__ import annotations

import sys
from pathlib import Path

from calctra_agent._logging import configure_logging
from calctra_agent.config import load_settings
from calctra_agent.daemon import build_agent, open_session, run_until_signalled
from tests.process_runner import ProcessRunner


def main(config_path: str) -> None:
    settings = load_settings(Path(config_path))
    configure_logging(settings.log_level)
    session = open_session(settings)
    try:
        agent = build_agent(settings, session, ProcessRunner(settings.work_dir))
        run_until_signalled(agent)
    finally:
        session.client.close()
        session.state.close()


if __name__ == "__main__":
    main(sys.argv[1])
