# Sourced by the scripts in this folder, from the repository root: makes sure
# .venv exists, holds this checkout installed with its dev extras, and is active.

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 python3; do
        [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

if [ ! -x .venv/bin/python ]; then
    if ! base_python="$(find_python)"; then
        echo "error: django-raft needs Python >= 3.11; found neither python3.11 nor a python3" \
            "that new (set PYTHON=/path/to/python3.x to choose one)." >&2
        exit 1
    fi
    echo "Creating .venv with $("$base_python" --version) ..."
    "$base_python" -m venv .venv
elif ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: .venv was made with $(.venv/bin/python --version 2>&1); django-raft needs" \
        "Python >= 3.11. Remove .venv and run again." >&2
    exit 1
fi

# Reinstall only when pyproject.toml (dependencies, pins) has changed since the last install.
pyproject_hash="$(.venv/bin/python -c \
    'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')"
if [ ! -e ".venv/.installed-$pyproject_hash" ]; then
    echo "Installing django-raft and its dev dependencies into .venv ..."
    PIP_DISABLE_PIP_VERSION_CHECK=1 .venv/bin/python -m pip install --quiet -e '.[dev]'
    rm -f .venv/.installed-*
    touch ".venv/.installed-$pyproject_hash"
fi
unset pyproject_hash

# shellcheck disable=SC1091
source .venv/bin/activate

# Compiled modules are cached under .venv (outside the source tree), as an installed
# package's are: the tests, the demo and the benchmarks start many node processes, and
# with PYTHONDONTWRITEBYTECODE each would compile the project's ~80 modules again
# (about 0.1 s of CPU per start, a quarter of a node's restart).
export PYTHONPYCACHEPREFIX="$PWD/.venv/pycache"
unset PYTHONDONTWRITEBYTECODE
