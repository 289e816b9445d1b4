#!/usr/bin/env bash
# Creates (once) a SoftHSMv2 token in its own directory and prints the path of its softhsm2.conf.
#
#   softhsm/init-token.sh DIR LABEL PIN SO_PIN
#
# Idempotent: the conf is rewritten, the token is initialised only if no token with LABEL exists yet.
# The PINs are passed to softhsm2-util and never printed.
set -euo pipefail

if [[ $# -ne 4 ]]; then
  echo "usage: $0 DIR LABEL PIN SO_PIN" >&2
  exit 64
fi
dir_arg=$1
label=$2
pin=$3
so_pin=$4

if [[ -z "$label" || -z "$pin" || -z "$so_pin" ]]; then
  echo "init-token: LABEL, PIN and SO_PIN must not be empty" >&2
  exit 64
fi

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$dir_arg/tokens"
dir=$(cd "$dir_arg" && pwd)
conf="$dir/softhsm2.conf"

# Escape characters that are special in a sed replacement.
tokendir_escaped=$(printf '%s' "$dir/tokens" | sed -e 's/[\\&|]/\\&/g')
sed -e "s|@TOKENDIR@|$tokendir_escaped|" "$script_dir/softhsm2.conf.template" >"$conf.tmp"
mv "$conf.tmp" "$conf"

export SOFTHSM2_CONF="$conf"

# softhsm2-util --show-slots prints "Label:            <label padded to 32 with spaces>" for each token.
token_exists() {
  softhsm2-util --show-slots 2>/dev/null |
    sed -n 's/^[[:space:]]*Label:[[:space:]]*//p' |
    sed 's/[[:space:]]*$//' |
    grep -Fxq -- "$label"
}

if ! token_exists; then
  # Output of softhsm2-util names the slot, never the PINs; keep it off stdout so stdout is only the conf path.
  softhsm2-util --init-token --free --label "$label" --so-pin "$so_pin" --pin "$pin" >&2
  if ! token_exists; then
    echo "init-token: token '$label' was not found after initialisation (SOFTHSM2_CONF=$conf)" >&2
    exit 1
  fi
fi

echo "$conf"
