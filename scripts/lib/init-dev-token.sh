#!/usr/bin/env bash
# Usage: scripts/lib/init-dev-token.sh DATA_DIR [LABEL]
#
# Prepares the development SoftHSM token of an hsm-kms data directory, idempotently:
#   DATA_DIR/softhsm/user-pin, DATA_DIR/softhsm/so-pin   random PINs, mode 0600, created once, never printed
#   DATA_DIR/softhsm/softhsm2.conf, DATA_DIR/softhsm/tokens/   written by softhsm/init-token.sh
# LABEL defaults to $KMS_TOKEN_LABEL, then hsm-kms. Prints the softhsm2.conf path on stdout (nothing else).
# Used by scripts/dev and by the softhsm-init service of docker-compose.yml.
set -euo pipefail

die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  die "usage: $0 DATA_DIR [LABEL]"
fi
data_dir="$1"
label="${2:-${KMS_TOKEN_LABEL:-hsm-kms}}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
init_token="$repo_root/softhsm/init-token.sh"
[ -f "$init_token" ] || die "$init_token not found"
command -v softhsm2-util >/dev/null 2>&1 || die "softhsm2-util not found: install SoftHSMv2 (apt-get install softhsm2)"

umask 077
mkdir -p "$data_dir/softhsm"
data_dir="$(cd "$data_dir" && pwd -P)"
hsm_dir="$data_dir/softhsm"
chmod 700 "$data_dir" "$hsm_dir" 2>/dev/null || true

# A token exists when tokens/ has a token directory in it.
has_token=false
if [ -d "$hsm_dir/tokens" ] && [ -n "$(find "$hsm_dir/tokens" -mindepth 1 -maxdepth 1 -type d -print -quit)" ]; then
  has_token=true
fi

# Refuse the two states that would silently lose keys or lock us out.
if [ "$has_token" = true ] && [ ! -s "$hsm_dir/user-pin" ]; then
  die "$hsm_dir/tokens holds a token but $hsm_dir/user-pin is missing: restore the PIN file, or move $data_dir away to start afresh (its keys will be lost)"
fi
if [ "$has_token" = false ] && [ -e "$data_dir/kms.db" ]; then
  die "$data_dir/kms.db exists but the SoftHSM token in $hsm_dir/tokens is gone: the keys it describes cannot be used without it. Restore the token directory, or move $data_dir away to start afresh"
fi

# 32 hex characters from the kernel's CSPRNG; written atomically, no trailing newline.
new_pin_file() {
  local file="$1" tmp
  [ -s "$file" ] && return 0
  tmp="$(mktemp "$file.XXXXXX")"
  od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$tmp"
  [ "$(wc -c <"$tmp")" -eq 32 ] || die "could not generate a PIN for $file"
  chmod 600 "$tmp"
  mv -f "$tmp" "$file"
}
new_pin_file "$hsm_dir/user-pin"
new_pin_file "$hsm_dir/so-pin"

pin="$(cat "$hsm_dir/user-pin")"
so_pin="$(cat "$hsm_dir/so-pin")"
conf_out="$(SOFTHSM2_CONF="$hsm_dir/softhsm2.conf" bash "$init_token" "$hsm_dir" "$label" "$pin" "$so_pin")" ||
  die "softhsm/init-token.sh failed for $hsm_dir (label $label)"
unset pin so_pin

conf="$(printf '%s\n' "$conf_out" | tail -n 1)"
if [ -z "$conf" ] || [ ! -f "$conf" ]; then
  conf="$hsm_dir/softhsm2.conf"
fi
[ -f "$conf" ] || die "softhsm/init-token.sh did not write $conf"

# A wrong SOFTHSM2_CONF silently falls back to /etc/softhsm: check that the token is really there.
if ! SOFTHSM2_CONF="$conf" softhsm2-util --show-slots 2>/dev/null | awk -v want="$label" '
  $1 == "Label:" { sub(/^[[:space:]]*Label:[[:space:]]*/, ""); sub(/[[:space:]]+$/, ""); if ($0 == want) found = 1 }
  END { exit !found }'; then
  die "no token labelled '$label' is visible through $conf"
fi

printf '%s\n' "$conf"
