# Sourced by scripts/test and scripts/demo: moves to the repository root and makes sure .venv
# exists and holds the project, installed editable with its test extras. Needs only Python
# 3.11+ (PYTHON names another interpreter than python3); on Debian, as root, it installs
# python3-venv with apt-get when the venv module cannot make a virtualenv.

_repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$_repo_root"

_python="${PYTHON:-python3}"

_require_python() {
    if ! command -v "$_python" >/dev/null 2>&1; then
        echo "setup: $_python not found; install Python 3.11 or newer" >&2
        exit 1
    fi
    if ! "$_python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "setup: $("$_python" --version 2>&1) is too old; Calctra Agent needs 3.11+" >&2
        exit 1
    fi
}

_ensure_venv_module() {
    # Debian's python3 lacks ensurepip until python3-venv is installed.
    if "$_python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        return
    fi
    if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: $_python cannot make a virtualenv; install python3-venv" >&2
        exit 1
    fi
    echo "setup: installing python3-venv"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
}

_create_venv() {
    # A .venv left without pip by an interrupted run is made again.
    if [[ -x .venv/bin/python && -x .venv/bin/pip ]]; then
        return
    fi
    _ensure_venv_module
    echo "setup: creating .venv"
    rm -rf .venv
    "$_python" -m venv .venv
}

_install_project() {
    # Reinstalled whenever pyproject.toml changes; the stamp lives inside .venv.
    local stamp=.venv/.calctra-installed wanted
    wanted="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [[ -f $stamp && "$(cat "$stamp")" == "$wanted" ]]; then
        return
    fi
    echo "setup: installing the project into .venv"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
    echo "$wanted" >"$stamp"
}

_require_python
_create_venv
_install_project
