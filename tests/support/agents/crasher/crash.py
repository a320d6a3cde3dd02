"""Dies before it is ready: the fabric must give up after max_restarts and say why."""

import sys

print("crasher: refusing to start", file=sys.stderr)
sys.exit(3)
