# shellcheck shell=bash
# Sourced by scripts/dev, scripts/test and scripts/kms. Defines functions only; sourcing has no side effects
# besides setting KMS_REPO_ROOT. Safe under `set -euo pipefail`. Everything it prints goes to stderr, so that
# `$(scripts/kms token ...)` captures only the command's own output.
#
#   kms_bootstrap        full: Node check, SoftHSM (apt) if missing, npm ci if stale, build if stale
#   kms_bootstrap_lite   Node check, npm ci only if node_modules is missing, build only if stale
#   kms_build_or_fail    build if stale; returns non-zero instead of exiting (scripts/test uses it)

KMS_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
export KMS_REPO_ROOT

KMS_SOFTHSM_MODULE_DEFAULT=/usr/lib/softhsm/libsofthsm2.so

kms_log() { printf '%s\n' "$*" >&2; }
kms_die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# Runs a command as root: directly when we are root, through sudo when it exists, otherwise fails.
kms_as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    kms_die "need root to run '$*' (not root and no sudo); install it by hand"
  fi
}

kms_check_node() {
  command -v node >/dev/null 2>&1 || kms_die "node not found: install Node.js 20 or newer (https://nodejs.org)"
  command -v npm >/dev/null 2>&1 || kms_die "npm not found: install Node.js 20 or newer with npm"
  local major
  major="$(node -p 'process.versions.node.split(".")[0]')"
  if [ "$major" -lt 20 ]; then
    kms_die "Node.js $(node --version) is too old: hsm-kms needs Node.js 20 or newer"
  fi
}

# SoftHSMv2 from Debian: softhsm2-util (token setup) and the PKCS#11 module the service loads.
kms_ensure_softhsm() {
  local module="${KMS_PKCS11_LIBRARY:-$KMS_SOFTHSM_MODULE_DEFAULT}"
  if command -v softhsm2-util >/dev/null 2>&1 && [ -e "$module" ]; then
    return 0
  fi
  command -v apt-get >/dev/null 2>&1 ||
    kms_die "SoftHSMv2 is missing (softhsm2-util or $module) and this is not a Debian/Ubuntu system: install SoftHSMv2 by hand"
  kms_log "==> installing SoftHSMv2 (apt-get install softhsm2)"
  kms_as_root apt-get update >&2
  kms_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y softhsm2 >&2
  command -v softhsm2-util >/dev/null 2>&1 || kms_die "softhsm2-util still missing after installing softhsm2"
  [ -e "$module" ] || kms_die "PKCS#11 module $module still missing after installing softhsm2 (set KMS_PKCS11_LIBRARY?)"
}

# NSS softokn from Debian's libnss3: the second PKCS#11 module the tests run on (no daemon, no tools needed). Exports
# KMS_TEST_NSS_LIBRARY, the module's path for this machine's architecture, unless it is set already.
kms_ensure_nss() {
  local module="${KMS_TEST_NSS_LIBRARY:-}"
  if [ -z "$module" ]; then
    module="$(kms_find_softokn)"
  fi
  if [ -z "$module" ] || [ ! -e "$module" ]; then
    command -v apt-get >/dev/null 2>&1 ||
      kms_die "NSS softokn (libsoftokn3.so) is missing and this is not a Debian/Ubuntu system: install NSS by hand and set KMS_TEST_NSS_LIBRARY"
    kms_log "==> installing NSS (apt-get install libnss3)"
    kms_as_root apt-get update >&2
    kms_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y libnss3 >&2
    module="${KMS_TEST_NSS_LIBRARY:-$(kms_find_softokn)}"
    if [ -z "$module" ] || [ ! -e "$module" ]; then
      kms_die "libsoftokn3.so still missing after installing libnss3 (set KMS_TEST_NSS_LIBRARY?)"
    fi
  fi
  export KMS_TEST_NSS_LIBRARY="$module"
}

# gcc and the C library headers (libc6-dev): the tests compile the CloudHSM-rules shim module
# (test/support/cloudhsm-shim/cloudhsm-shim.c) with them.
kms_ensure_gcc() {
  if command -v gcc >/dev/null 2>&1 && [ -e /usr/include/stdio.h ] && [ -e /usr/include/dlfcn.h ]; then
    return 0
  fi
  command -v apt-get >/dev/null 2>&1 ||
    kms_die "gcc or the C library headers are missing and this is not a Debian/Ubuntu system: install gcc by hand"
  kms_log "==> installing gcc (apt-get install gcc libc6-dev)"
  kms_as_root apt-get update >&2
  kms_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y gcc libc6-dev >&2
  command -v gcc >/dev/null 2>&1 || kms_die "gcc still missing after installing gcc"
}

# The openssl command: the TLS tests make a throw-away CA and certificates with it (test/support/test-pki.ts).
kms_ensure_openssl() {
  if command -v openssl >/dev/null 2>&1; then
    return 0
  fi
  command -v apt-get >/dev/null 2>&1 ||
    kms_die "the openssl command is missing and this is not a Debian/Ubuntu system: install OpenSSL by hand"
  kms_log "==> installing openssl (apt-get install openssl)"
  kms_as_root apt-get update >&2
  kms_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y openssl >&2
  command -v openssl >/dev/null 2>&1 || kms_die "openssl still missing after installing openssl"
}

# rngtest (rng-tools5) and ent: scripts/rng-check and the suite's short randomness check judge the service's random
# bytes with them.
kms_ensure_rng_tools() {
  if command -v rngtest >/dev/null 2>&1 && command -v ent >/dev/null 2>&1; then
    return 0
  fi
  command -v apt-get >/dev/null 2>&1 ||
    kms_die "rngtest or ent is missing and this is not a Debian/Ubuntu system: install rng-tools and ent by hand"
  kms_log "==> installing rngtest and ent (apt-get install rng-tools5 ent)"
  kms_as_root apt-get update >&2
  kms_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y rng-tools5 ent >&2
  command -v rngtest >/dev/null 2>&1 || kms_die "rngtest still missing after installing rng-tools5"
  command -v ent >/dev/null 2>&1 || kms_die "ent still missing after installing ent"
}

# Prints the path of libsoftokn3.so in the multiarch library directory, or nothing. This machine's own architecture
# comes first: with another architecture's libnss3 also installed (i386 on amd64), the glob alone could pick it.
kms_find_softokn() {
  local candidate
  for candidate in "/usr/lib/$(uname -m)-linux-gnu/libsoftokn3.so" /usr/lib/*-linux-gnu/libsoftokn3.so \
    /usr/lib64/libsoftokn3.so /usr/lib/libsoftokn3.so; do
    if [ -e "$candidate" ]; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  return 0
}

# Loads both native addons once: catches an install whose node-gyp build was skipped or broken.
kms_native_addons_ok() {
  (cd "$KMS_REPO_ROOT" && node -e '
    const { PKCS11 } = require("pkcs11js");
    new PKCS11();
    const Database = require("better-sqlite3");
    new Database(":memory:").close();
  ') >/dev/null 2>&1
}

kms_npm_ci() {
  local log status=0
  log="$(mktemp "${TMPDIR:-/tmp}/hsm-kms-npm-ci.XXXXXX")"
  kms_log "==> npm ci"
  (cd "$KMS_REPO_ROOT" && npm ci --no-audit --no-fund 2>&1) | tee "$log" >&2 || status=$?
  if [ "$status" -ne 0 ]; then
    if grep -q 'can only install packages when your package.json and package-lock.json' "$log"; then
      # A lock file that lacks entries (e.g. other platforms' optional packages) makes npm ci refuse. npm install
      # --no-save still follows the lock for every entry it has and leaves package-lock.json untouched.
      kms_log "warning: package-lock.json is out of sync with package.json (npm ci refused); falling back to"
      kms_log "         'npm install --no-save'. Fix it with: npm install --package-lock-only"
      (cd "$KMS_REPO_ROOT" && npm install --no-save --no-audit --no-fund >&2) || {
        rm -f "$log"
        kms_die "npm install failed"
      }
    else
      rm -f "$log"
      kms_die "npm ci failed"
    fi
  fi
  rm -f "$log"
  if ! kms_native_addons_ok; then
    kms_log "==> native addons did not load; rebuilding pkcs11js and better-sqlite3"
    (cd "$KMS_REPO_ROOT" && npm rebuild pkcs11js better-sqlite3 >&2) || kms_die "npm rebuild of the native addons failed"
    kms_native_addons_ok ||
      kms_die "pkcs11js or better-sqlite3 does not load; a C++ toolchain (python3, make, g++) and Node headers are needed"
  fi
}

# $1 = always | if-missing
kms_ensure_deps() {
  local mode="${1:-always}"
  local root="$KMS_REPO_ROOT"
  if [ ! -d "$root/node_modules" ] || [ ! -f "$root/node_modules/.package-lock.json" ]; then
    kms_npm_ci
  elif [ "$mode" = always ] && [ "$root/package-lock.json" -nt "$root/node_modules/.package-lock.json" ]; then
    kms_npm_ci
  fi
}

# Fingerprint of every input of the build: paths and modification times, so added, changed and deleted
# sources all count.
kms_build_fingerprint() {
  (
    cd "$KMS_REPO_ROOT" &&
      {
        find src tsconfig.json tsconfig.build.json package.json package-lock.json -type f -printf '%p %T@\n' \
          2>/dev/null || true
      } | LC_ALL=C sort | cksum
  )
}

kms_build_or_fail() {
  local root="$KMS_REPO_ROOT" stamp="$KMS_REPO_ROOT/dist/.build-fingerprint" fp
  fp="$(kms_build_fingerprint)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$fp" ]; then
    return 0
  fi
  kms_log "==> npm run build"
  # A clean dist/: no stale modules of deleted sources.
  rm -rf "$root/dist"
  if ! (cd "$root" && npm run --silent build >&2); then
    kms_log "error: build failed (npm run build)"
    return 1
  fi
  printf '%s\n' "$fp" >"$stamp"
}

kms_build() {
  kms_build_or_fail || exit 1
}

kms_bootstrap() {
  kms_check_node
  kms_ensure_softhsm
  kms_ensure_deps always
  kms_build
}

kms_bootstrap_lite() {
  kms_check_node
  kms_ensure_deps if-missing
  kms_build
}

# Same defaults as the service: data dir ./.data under the repo root, overridable with KMS_DATA_DIR. Exports the
# dev SoftHSM settings when the dev token exists (scripts/dev creates it).
kms_dev_env() {
  export KMS_DATA_DIR="${KMS_DATA_DIR:-$KMS_REPO_ROOT/.data}"
  case "$KMS_DATA_DIR" in
  /*) ;;
  *) KMS_DATA_DIR="$(pwd -P)/$KMS_DATA_DIR" ;;
  esac
  export KMS_TOKEN_LABEL="${KMS_TOKEN_LABEL:-hsm-kms}"
  local hsm_dir="$KMS_DATA_DIR/softhsm"
  if [ -z "${SOFTHSM2_CONF:-}" ] && [ -f "$hsm_dir/softhsm2.conf" ]; then
    export SOFTHSM2_CONF="$hsm_dir/softhsm2.conf"
  fi
  if [ -z "${KMS_PIN:-}" ] && [ -z "${KMS_PIN_FILE:-}" ] && [ -f "$hsm_dir/user-pin" ]; then
    export KMS_PIN_FILE="$hsm_dir/user-pin"
  fi
}
