"""``python -m tcp_multiplexer.targets example-server PROTOCOL [options]``."""

from __future__ import annotations

import sys

from tcp_multiplexer.targets.cli import main

sys.exit(main())
