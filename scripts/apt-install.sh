#!/usr/bin/env bash
# Install Debian packages a make target needs (run as root), refreshing the package lists
# once if they are stale; as another user, say which command installs them and fail.
# Usage: scripts/apt-install.sh "<who needs them>" PACKAGE...
set -euo pipefail
who=$1
shift
if [ "$(id -u)" != 0 ]; then
    echo "$who: sudo apt-get install $*" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends "$@" ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@"; }
