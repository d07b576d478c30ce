#!/usr/bin/env bash
# Make sure Fashion-MNIST (the embedded default data set) is present.
# Installs Debian's dataset-fashion-mnist when missing and apt is usable; otherwise says how to get it.
set -euo pipefail
DATA_DIR="${DATA_DIR:-/usr/share/datasets/fashion-mnist}"
have() { ls "$DATA_DIR"/train-images-idx3-ubyte* >/dev/null 2>&1 && ls "$DATA_DIR"/t10k-labels-idx1-ubyte* >/dev/null 2>&1; }
have && exit 0
if [ "$DATA_DIR" = /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  echo "Fashion-MNIST not found; installing the Debian package dataset-fashion-mnist" >&2
  if $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
     { $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }; then
    have && exit 0
  fi
fi
cat >&2 <<MSG
Fashion-MNIST is missing: no train-images-idx3-ubyte[.gz] / t10k-labels-idx1-ubyte[.gz] in $DATA_DIR.
Get it with either
  - Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist   (installs to /usr/share/datasets/fashion-mnist)
  - the four IDX files from the Fashion-MNIST GitHub repository (zalandoresearch/fashion-mnist, data/fashion),
    then run: make DATA_DIR=/path/to/that/folder demo   (or vitsam ... --data-dir /path/to/that/folder)
MSG
exit 1
