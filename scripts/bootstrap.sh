#!/usr/bin/env bash
# Prepare a machine for twopc development: database and broker server programs + .venv.
# Idempotent; safe to run again. Does not start any server (use `twopc dev up`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '==> %s\n' "$*"; }
die() { printf 'bootstrap: %s\n' "$*" >&2; exit 1; }

have_postgres() {
    local bindir
    if command -v pg_config >/dev/null 2>&1; then
        bindir="$(pg_config --bindir 2>/dev/null || true)"
        [[ -n "$bindir" && -x "$bindir/initdb" ]] && return 0
    fi
    command -v initdb >/dev/null 2>&1 && return 0
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

find_program() {  # find_program NAME... : first one on PATH, /usr/sbin or /usr/bin
    local name dir
    for name in "$@"; do
        command -v "$name" >/dev/null 2>&1 && return 0
        for dir in /usr/sbin /usr/bin; do
            [[ -x "$dir/$name" ]] && return 0
        done
    done
    return 1
}

have_mariadb() {
    find_program mariadbd mysqld && find_program mariadb-install-db mysql_install_db
}

have_rabbitmq() {  # the real start script, not /usr/sbin's wrapper (see devserver/rabbitmq.py)
    [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] \
        || compgen -G '/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server' >/dev/null
}

install_servers() {
    local missing=()
    have_postgres || missing+=(postgresql)
    have_mariadb || missing+=(mariadb-server)
    have_rabbitmq || missing+=(rabbitmq-server)
    if [[ ${#missing[@]} -eq 0 ]]; then
        say "PostgreSQL, MariaDB and RabbitMQ server programs found"
        return
    fi
    if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        die "missing servers; install them, e.g.: sudo apt-get install -y ${missing[*]}"
    fi
    say "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    have_postgres && have_mariadb && have_rabbitmq || die "installed ${missing[*]} but the server programs are still not found"
}

make_venv() {
    local python="${PYTHON:-python3}"
    command -v "$python" >/dev/null 2>&1 || die "$python not found; install Python >= 3.11 (apt-get install python3 python3-venv)"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$python is $("$python" -V 2>&1); twopc needs Python >= 3.11 (set PYTHON=/path/to/python3.11)"
    if [[ ! -x .venv/bin/python ]]; then
        say "creating .venv with $("$python" -V 2>&1)"
        "$python" -m venv .venv || die "python3 -m venv failed; install the venv module (apt-get install python3-venv)"
        .venv/bin/pip install -q --upgrade pip
    fi
    say "installing twopc and its dev tools into .venv"
    .venv/bin/pip install -q -e '.[dev]'
    # The package's bytecode, made once: an editable install is imported from this source,
    # and an interpreter that may not write bytecode (PYTHONDONTWRITEBYTECODE, set on some
    # machines) would compile every module again at every start — about 40% of the start
    # of each `twopc` command. A source edited later is compiled from source until the next
    # bootstrap (Python checks each file's timestamp), so this is never stale, only slower.
    say "compiling the package's bytecode"
    .venv/bin/python -m compileall -q -j 0 -x '/(\.venv|\.twopc|\.typecheck|build|dist|tests)/' .
    # mypy checks the package as it is imported, twopc.*, whose root is this directory.
    mkdir -p .typecheck
    ln -sfn .. .typecheck/twopc
}

install_servers
make_venv
say "done: activate with 'source .venv/bin/activate', then 'twopc dev up'"
