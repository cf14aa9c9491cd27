#!/usr/bin/env bash
# The main job: a real backup of the lab host's VMs by the example flow in a headless Node-RED.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec node dist/lab/main-job.js
