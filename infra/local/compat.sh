#!/bin/sh
# `make compat`: install pdcat into a fresh virtualenv of every Python 3.11 or newer found here (the
# default interpreters and pyenv's), as `pipx install .` would, and run serve, login, push and pull
# with it. Exits non-zero on the first Python that fails. Needs the package index pip uses here.
set -eu
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/pdcat-compat.XXXXXX")
trap 'rm -rf "$work"' EXIT
found=""
for py in python3.11 python3.12 python3.13 python3.14 "$HOME"/.pyenv/versions/3.1[1-9]*/bin/python3; do
    exe=$(command -v "$py" 2>/dev/null || true)
    [ -n "$exe" ] && [ -x "$exe" ] || continue
    version=$("$exe" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || continue  # a pyenv shim of a version not selected
    case " $found " in *" $version "*) continue ;; esac
    "$exe" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || continue
    found="$found $version"
    venv="$work/venv$version"
    "$exe" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$repo" 2>"$work/pip.log" || {
        echo "Python $version: pip install failed"; tail -5 "$work/pip.log"; exit 1; }
    data="$work/data$version"; mkdir -p "$data/src/VM.pvm"
    export PDCAT_CONFIG_DIR="$data/cfg" PDCAT_CACHE_DIR="$data/cache" PDCAT_LOG_LEVEL=WARNING PDCAT_KEYRING=0
    export PDCAT_ADMIN_PASSWORD="compat-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
    "$venv/bin/pdcat" serve --data "$data/catalog" --port 0 >"$data/serve.log" 2>&1 &
    server=$!
    for _ in $(seq 100); do grep -q "serving on" "$data/serve.log" 2>/dev/null && break; sleep 0.1; done
    url=$(grep -o 'http://[0-9.:]*' "$data/serve.log" | head -1)
    echo "<config/>" >"$data/src/VM.pvm/config.pvs"
    head -c 3000000 /dev/urandom >"$data/src/VM.pvm/disk.hds"
    ok=0
    "$venv/bin/pdcat" login --server "$url" -u admin -p "$PDCAT_ADMIN_PASSWORD" -q &&
        "$venv/bin/pdcat" push "$data/src/VM.pvm" --catalog compat --version 1 --arch arm64 -q &&
        "$venv/bin/pdcat" pull compat:1 --arch arm64 --dest "$data/out" --no-register -q &&
        cmp -s "$data/src/VM.pvm/disk.hds" "$data/out/compat.pvm/disk.hds" && ok=1
    kill "$server" 2>/dev/null || true
    if [ "$ok" = 1 ]; then
        echo "Python $version: $("$venv/bin/pdcat" --version): install, serve, login, push and pull OK"
    else
        echo "Python $version: FAILED (server log: $(tail -3 "$data/serve.log"))"; exit 1
    fi
done
[ -n "$found" ] || { echo "no Python 3.11 or newer found"; exit 1; }
