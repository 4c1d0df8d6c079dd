# shellcheck shell=bash
# Rust toolchain components used by the checks.
if command -v rustup >/dev/null 2>&1; then
    for c in rustfmt clippy; do
        rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c" >&2
    done
fi
