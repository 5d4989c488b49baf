"""The container's health check: exit 0 when banditrec's /health answers 200, else 1.

Standard library only (the image has no curl). The port is ``BANDITREC_PORT`` (8020), the
one `banditrec serve` listens on; ``BANDITREC_HEALTH_URL`` overrides the whole URL. A
server that answers ``"status": "degraded"`` is healthy here: it still serves decisions,
and restarting it would not repair what is failing (its disk, or Redis). The status and
faults are printed, so ``docker inspect`` shows them.
"""

import json
import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("BANDITREC_PORT", "8020")
    url = os.environ.get("BANDITREC_HEALTH_URL", f"http://127.0.0.1:{port}/health")
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            body = json.loads(response.read())
    except (OSError, ValueError) as exc:  # refused, timed out, an error status, not JSON
        print(f"unhealthy: {url}: {exc}")
        return 1
    faults = "; ".join(body.get("faults", []))
    print(
        f"{body.get('status')}: model {body.get('model_version')}"
        + (f"; {faults}" if faults else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
