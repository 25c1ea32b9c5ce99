#!/usr/bin/env bash
# Install (or verify) the Debian packages the service tests need:
#   systemd    - systemd-analyze (unit checks) and systemd-socket-activate (a real activator)
#   prometheus - a real Prometheus server scraping the daemon's metrics
#   chromium, chromium-driver - a real headless browser for the artifacts view's tests
#   python3    - the system's CPython of the virtualenv's version, for the test users
#                (the virtualenv's own interpreter may sit under /root, out of their reach)
# Idempotent; installs only what is missing, and only as root (else says what to install).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
pyver=$("$PY" -c 'import sys; print("python%d.%d" % sys.version_info[:2])')
need=()
if ! command -v systemd-analyze >/dev/null || ! command -v systemd-socket-activate >/dev/null; then
    need+=(systemd)
fi
[ -x "/usr/bin/$pyver" ] || need+=("$pyver")
command -v prometheus >/dev/null || need+=(prometheus)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install_system: the service and view tests need: ${need[*]} (Debian packages); they skip without" >&2
    exit 0
fi
log=$(mktemp)
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${need[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "install_system: could not install ${need[*]}" >&2
    exit 1
fi
rm -f "$log"
