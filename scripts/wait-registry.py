"""Wait until a registry on 127.0.0.1:PORT answers ``/v2/`` (at most about a minute).

    python3 scripts/wait-registry.py PORT
"""

import sys
import time
import urllib.request

for _ in range(600):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v2/", timeout=1)
        break
    except OSError:  # not yet listening, or an HTTP error while it starts
        time.sleep(0.1)
