#!/usr/bin/env bash
# Installs the Debian packages that ffcv 1.0.2 needs to build from source (OpenCV and libjpeg-turbo headers,
# found through pkg-config), and headless Chromium, which the tests use to render the DVC plots page. Does
# nothing when they are already present; uses sudo when not root.
set -euo pipefail

if pkg-config --exists opencv4 libturbojpeg 2>/dev/null && command -v chromium >/dev/null; then
    exit 0
fi

packages=(pkg-config libopencv-dev libturbojpeg0-dev chromium)
if [ "$(id -u)" -eq 0 ]; then
    run=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    run=(sudo)
else
    echo "error: ffcv and the tests need system packages that are not installed: ${packages[*]}" >&2
    echo "Install them as root, then run make again:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends ${packages[*]}" >&2
    exit 1
fi
echo "Installing system packages for ffcv and the tests: ${packages[*]}"
"${run[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${run[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
