#!/bin/sh
# Installs the Debian 12 packages cdiff builds against, if any is missing
# (OpenMPI for `make MPI=1` and the distributed tests).
set -e
PKGS="build-essential libopenblas-dev liblapacke-dev libcjson-dev libpng-dev libjpeg-dev libwebp-dev zlib1g-dev libopenmpi-dev openmpi-bin"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
[ -z "$missing" ] && exit 0
echo "installing:$missing" >&2
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
