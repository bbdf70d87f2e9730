#!/bin/sh
# System packages the test suite drives: Debian's chromium (the manifests report is rendered in headless Chromium).
# Installs it only when missing; uses sudo when not root.
set -e
command -v chromium >/dev/null 2>&1 && exit 0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || { $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium; }
