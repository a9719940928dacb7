#!/usr/bin/env bash
# Install what the tests need, then run them: `bash tests/run.sh [pytest options]`.
# The browser tests drive Debian's Chromium (/usr/bin/chromium) through Playwright;
# Playwright's own browser download is not used. Without Chromium they are skipped,
# unless CI is set, where they fail.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e '.[test,studio]'
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    echo "installing Debian's chromium for the browser tests"
    apt-get update -qq > /dev/null || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null \
        || echo "could not install chromium: the browser tests are skipped (and fail under CI)"
fi
python3 -m pytest "$@"
