# Shared set-up for scripts/serve and scripts/test: idempotent, safe on a machine that never saw the project.
# Each step re-runs only when what it depends on changed (a hash stamp next to what it installed).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.venv"

say() { printf '\033[1m[collab]\033[0m %s\n' "$*" >&2; }

stamp_matches() { # stamp_file content
  [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]
}

ensure_python_env() { # ensure_python_env EXTRAS   (EXTRAS: "", "postgres,redis" or "test", each covering the one before)
  local extras="$1" python="${PYTHON:-python3}"
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "collab needs Python >= 3.11 (found: $("$python" --version 2>&1)); set PYTHON=/path/to/python3.11"
    exit 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv in .venv"
    "$python" -m venv "$VENV"
  fi
  local hash stamp="$VENV/.collab-installed"
  hash="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
  # A test install serves `serve` too (it has the postgres and redis extras); reinstall only when pyproject.toml
  # changed or more extras are wanted.
  if stamp_matches "$stamp" "test $hash" \
    || { [ "$extras" != "test" ] && stamp_matches "$stamp" "postgres,redis $hash"; } \
    || { [ -z "$extras" ] && stamp_matches "$stamp" "base $hash"; }; then
    return 0
  fi
  say "installing collab${extras:+ with $extras extras} into .venv"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --editable "$ROOT${extras:+[$extras]}"
  echo "${extras:-base} $hash" > "$stamp"
}

ensure_node_packages() { # ensure_node_packages DIR   (a folder with package.json and package-lock.json)
  local dir="$1" want
  if ! command -v npm >/dev/null 2>&1; then
    say "npm is needed for $dir (install Node.js >= 18 and npm)"
    exit 1
  fi
  want="$(cat "$dir/package-lock.json" | sha256sum | cut -d' ' -f1)"
  if ! stamp_matches "$dir/node_modules/.collab-installed" "$want"; then
    say "installing npm packages in ${dir#"$ROOT/"}"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" > "$dir/node_modules/.collab-installed"
  fi
}

ensure_chromium() { # Debian's Chromium for the browser tests (never a browser download of a test tool's own)
  if [ -x /usr/bin/chromium ]; then
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    say "the browser tests need Chromium at /usr/bin/chromium (Debian package: chromium)"
    exit 1
  fi
  say "installing Debian's chromium and chromium-driver for the browser tests"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
}

BENCH_REFERENCE="$ROOT/.cache/bench/reference"

ensure_bench_reference() { # the reference @y/websocket-server that scripts/bench compares with, in .cache/bench/
  local src="$ROOT/scripts/benchlib/reference" file
  mkdir -p "$BENCH_REFERENCE"
  for file in package.json package-lock.json; do
    cmp -s "$src/$file" "$BENCH_REFERENCE/$file" || cp "$src/$file" "$BENCH_REFERENCE/$file"
  done
  ensure_node_packages "$BENCH_REFERENCE"
}
