# Shared helpers for Spindle's scripts. Sourced, not run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Installs what building Spindle needs on a fresh machine: the pinned Rust
# toolchain with the wasm32-wasip2 target, and a C compiler for SQLite.
ensure_toolchain() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "cargo not found: install Rust with rustup (https://rustup.rs) and re-run" >&2
        exit 1
    fi
    if ! command -v cc >/dev/null 2>&1; then
        log "installing a C compiler (needed to build the bundled SQLite)"
        apt_install build-essential
    fi
    if command -v rustup >/dev/null 2>&1; then
        # rust-toolchain.toml pins the version, components and target; this
        # installs whatever of it is missing.
        local channel
        channel="$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)"
        if ! rustup target list --installed --toolchain "$channel" 2>/dev/null | grep -qx wasm32-wasip2; then
            log "installing Rust $channel with the wasm32-wasip2 target"
            rustup toolchain install "$channel" --profile minimal --component rustfmt,clippy --target wasm32-wasip2
        fi
    fi
}

apt_install() {
    if command -v apt-get >/dev/null 2>&1; then
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
    else
        echo "please install: $*" >&2
        exit 1
    fi
}

# The wasm components spin.toml serves.
COMPONENTS=(spindle-api spindle-metrics spindle-webhook spindle-trigger spindle-approve
    spindle-jobs spindle-scheduler spindle-docs spindle-dashboard)
# Crates that only build for wasm32-wasip2 (they link spin-sdk).
WASM_ONLY=("${COMPONENTS[@]}" spindle-probe spindle-spin)

# Builds every wasm component (and the test-only probe) in one cargo call.
build_components() {
    local pkgs=()
    for p in "${COMPONENTS[@]}" "$@"; do pkgs+=(-p "$p"); done
    log "building components for wasm32-wasip2"
    cargo build --locked --target wasm32-wasip2 --release "${pkgs[@]}"
}

# Podman, runc and a static busybox for the container executor and its
# tests; CONTAINERS_CONF points podman at the project's settings (no
# systemd cgroups, no default ulimits). Podman also needs `--runtime runc`,
# which PODMAN_GLOBAL_ARGS carries. Agents with `network: true` run on
# podman's default bridge network, which needs netavark and iptables; apt
# brings them only as recommendations, so they are asked for by name.
PODMAN_GLOBAL_ARGS=(--runtime runc)
ensure_podman() {
    local missing=()
    command -v podman >/dev/null 2>&1 || missing+=(podman)
    command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || missing+=(runc)
    [ -x /bin/busybox ] || missing+=(busybox-static)
    [ -x /usr/lib/podman/netavark ] || [ -x /usr/libexec/podman/netavark ] || missing+=(netavark)
    command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || missing+=(iptables)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]} (container executor)"
        apt_install "${missing[@]}"
    fi
    export CONTAINERS_CONF="$ROOT/scripts/containers.conf"
}

# promtool and amtool check the alerting rules and the Alertmanager example
# under deploy/ (Debian's prometheus and prometheus-alertmanager packages;
# without their recommendations, which add the node exporter).
ensure_prometheus_tools() {
    local missing=()
    command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
    command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]} (promtool, amtool)"
        apt_install --no-install-recommends "${missing[@]}"
    fi
}

# The dashboard's browser test: Debian's Chromium, Node.js, and
# playwright-core from npm (tests/ui/package-lock.json; no browser download).
ensure_browser_tools() {
    local missing=()
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]} for the dashboard's browser test"
        apt_install --no-install-recommends "${missing[@]}"
    fi
    if [ ! -d "$ROOT/tests/ui/node_modules/playwright-core" ]; then
        log "installing playwright-core into tests/ui (npm ci)"
        (cd "$ROOT/tests/ui" && npm ci --no-audit --no-fund)
    fi
}

# Checks the alerting rules (and runs their unit tests), the example
# Prometheus configuration's syntax (its credential file exists only where
# it is deployed) and the Alertmanager example. tests/all/alerting.rs runs
# the same and more under `cargo test`.
check_alerting() {
    log "alerting rules and the Alertmanager example (promtool, amtool)"
    (
        cd deploy/prometheus
        promtool check rules alerts.yml
        promtool test rules alerts.test.yml
        promtool check config --syntax-only prometheus.yml
    )
    amtool check-config deploy/alertmanager/alertmanager.yml
}

AGENT_IMAGE=localhost/spindle/agents:latest

# Builds the reference agents as one static binary and imports an image
# holding it, a static busybox and git (for the patcher) with its libraries.
build_agent_image() {
    local triple
    triple="$(rustc -vV | sed -n 's/^host: //p')"
    log "building the reference agents (static, $triple)"
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --locked --release -p spindle-agents --target "$triple"
    local bin="$ROOT/target/$triple/release/spindle-agents"
    local root
    root="$(mktemp -d)"
    mkdir -p "$root/bin" "$root/tmp" "$root/etc"
    chmod 1777 "$root/tmp"
    cp /bin/busybox "$root/bin/busybox"
    # `ip` and `nc` let tests look at an agent's network from inside.
    for applet in sh cat echo sleep ls env grep sed head tail wc ip nc; do
        ln -s busybox "$root/bin/$applet"
    done
    cp "$bin" "$root/bin/spindle-agents"
    if command -v git >/dev/null 2>&1; then
        local git_bin lib
        git_bin="$(command -v git)"
        cp "$git_bin" "$root/bin/git"
        for lib in $(ldd "$git_bin" | grep -o '/[^ ]*'); do
            mkdir -p "$root$(dirname "$lib")"
            cp -L "$lib" "$root$lib"
        done
    fi
    echo "root:x:0:0:root:/tmp:/bin/sh" > "$root/etc/passwd"
    log "importing $AGENT_IMAGE"
    tar -C "$root" -cf "$root.tar" .
    podman "${PODMAN_GLOBAL_ARGS[@]}" import --change 'ENV PATH=/bin' "$root.tar" "$AGENT_IMAGE" >/dev/null
    rm -rf "$root" "$root.tar"
}
