"""Run ``grokschedule sweep SPEC`` on the head node, for ``ray submit``.

``ray submit CLUSTER.yaml SCRIPT -- ARGS`` copies SCRIPT to the head and runs ``python SCRIPT
ARGS`` there, so it cannot start a console script directly; this file hands over to it.
"""

import os
import sys

if __name__ == "__main__":
    os.execvp("grokschedule", ["grokschedule", "sweep", *sys.argv[1:]])
