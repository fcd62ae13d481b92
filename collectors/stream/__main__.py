"""``python -m collectors.stream``: run one stream loader until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import time

from collectors.common import start_cli
from collectors.stream.config import StreamConfig
from collectors.stream.loop import StreamLoader

log = logging.getLogger("collectors.stream")


def main(argv: list[str] | None = None) -> int:
    config, stop = start_cli("collectors.stream", StreamConfig, argv)
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("elastic_transport").setLevel(logging.WARNING)  # one INFO line per request otherwise
    loader = StreamLoader(config)
    started = time.monotonic()
    loader.run(stop)
    log.info("stream loader stopped after %d committed batch(es) in %.0f s", loader.committed_batches,
             time.monotonic() - started)
    if loader.fatal is not None:
        log.error("stream loader gave up: %s", loader.fatal)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
