"""`python -m tcp_multiplexer` runs the command line."""

from tcp_multiplexer.cli import main

raise SystemExit(main())
