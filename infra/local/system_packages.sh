#!/bin/sh
# The system tools `make test` and `make bench` run (tests/ and bench/ call them as commands), and the
# Debian package of each. Idempotent: when every command is found it does nothing (no apt-get at all);
# otherwise, as root with apt-get, it runs `apt-get update` once and installs only the missing packages.
# Without root or apt-get it names the packages to install and exits 1.
#
#   infra/local/system_packages.sh           install what is missing (or fail saying what)
#   infra/local/system_packages.sh --check   only report; exit 1 if something is missing
#
# Python's `zstandard` module is a pip wheel in .venv (it bundles libzstd): it never needs these.
set -eu

# command:package, one per line
REQUIRED='
mkfs.xfs:xfsprogs
zstd:zstd
tar:tar
gzip:gzip
mount:mount
umount:mount
losetup:mount
cp:coreutils
stat:coreutils
'

found() {
    # a non-root PATH may lack the sbin folders, where mkfs.xfs and losetup live
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}

missing_packages() {
    for entry in $REQUIRED; do
        found "${entry%%:*}" || echo "${entry#*:}"
    done | sort -u | tr '\n' ' ' | sed 's/ $//'
}

missing_commands() {
    for entry in $REQUIRED; do
        found "${entry%%:*}" || printf '%s ' "${entry%%:*}"
    done | sed 's/ $//'
}

packages=$(missing_packages)
[ -z "$packages" ] && exit 0

echo "system_packages: missing command(s): $(missing_commands) (Debian packages: $packages)" >&2
if [ "${1:-}" = "--check" ]; then
    exit 1
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "system_packages: cannot install them here (needs root and apt-get); install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends $packages" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "system_packages: apt-get install -y --no-install-recommends $packages" >&2
# shellcheck disable=SC2086 # one word per package
apt-get -q -o DPkg::Lock::Timeout=300 update >/dev/null
# shellcheck disable=SC2086
apt-get -q -o DPkg::Lock::Timeout=300 install -y --no-install-recommends $packages >/dev/null

still=$(missing_packages)
if [ -n "$still" ]; then
    echo "system_packages: still missing after apt-get install: $(missing_commands) (packages: $still)" >&2
    exit 1
fi
echo "system_packages: installed $packages" >&2
