#!/usr/bin/env bash
# Installs what anvil needs to build and test, only what is missing:
# Debian packages through apt-get, and a Python virtual environment (.venv)
# with the test-only packages from PyPI. Safe to run again.
#   scripts/setup.sh          build dependencies
#   scripts/setup.sh --test   also the test dependencies and .venv
#   scripts/setup.sh --browser  also a headless Chromium for
#                             tests/python/test_server_browser.py (Debian's
#                             chromium-headless-shell, about 220 MB installed:
#                             .ci/run installs it; without it that one test
#                             is skipped outside CI)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
want_browser=0
for a in "$@"; do
  case "$a" in
    --test) want_test=1 ;;
    --browser) want_browser=1 ;;
    *) echo "setup: unknown option $a" >&2; exit 2 ;;
  esac
done

pkgs=(build-essential cmake pkg-config libjansson-dev libpcre2-dev libutf8proc-dev libxxhash-dev
      libmicrohttpd-dev)
if [ $want_test = 1 ]; then
  # Open MPI: the tensor-parallel tests run under mpirun (docs/parallel.md);
  # the plain build finds it when present and runs one rank without it
  pkgs+=(libcmocka-dev python3 python3-venv curl clang libclang-rt-14-dev libopenmpi-dev openmpi-bin)
else
  pkgs+=(libcmocka-dev)   # the test executables are part of the default build
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" != 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# the browser alone, without its Recommends (a desktop's worth: printing,
# samba, perl, GTK): its Depends run it headless
if [ $want_browser = 1 ] && ! dpkg-query -W -f='${Status}' chromium-headless-shell 2>/dev/null | grep -q "install ok installed"; then
  echo "setup: installing chromium-headless-shell"
  SUDO=""
  [ "$(id -u)" != 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium-headless-shell >/dev/null
fi

if [ $want_test = 1 ]; then
  # (an older .venv without a package of the list gets it added)
  if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import pytest, tokenizers, openai, tritonclient.http' 2>/dev/null; then
    echo "setup: creating .venv with the test packages"
    python3 -m venv .venv
    .venv/bin/python -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt
  fi
fi
