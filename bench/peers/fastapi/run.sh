#!/usr/bin/env bash
# Run one FastAPI peer instance.
#   bench/peers/fastapi/run.sh PORT REDIS_URL
#   VENV=/tmp/peers-venv bench/peers/fastapi/run.sh 8001 redis://127.0.0.1:6420
# PORT / REDIS_URL may also come from the environment.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PORT="${1:-${PORT:-8000}}"
REDIS_URL="${2:-${REDIS_URL:-redis://127.0.0.1:6379}}"
VENV="${VENV:-$here/.venv}"
export REDIS_URL
cd "$here"
# permessage-deflate off, as for the socket.io peer (it only matters if a client offers it).
exec "$VENV/bin/uvicorn" app:app --host 127.0.0.1 --port "$PORT" --log-level warning \
  --ws-per-message-deflate false
