"""``python -m tcpnet``: the ``tcpnet`` command (see tcpnet.cli)."""
import sys

from tcpnet.cli import main

if __name__ == "__main__":
    sys.exit(main())
