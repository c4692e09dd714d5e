#!/usr/bin/env bash
# The README's two set-up commands, tried as a new user would: a fresh clone of the
# committed HEAD, a fresh virtual environment, the commands exactly as written.
# Not part of the pytest suite (it runs the suite itself); run it before a release:
#   bash tests/fresh_clone.sh
set -euo pipefail
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/clone"
cd "$work/clone"
mapfile -t commands < <(python3 -c 'import sys; sys.path.insert(0, "tests"); from test_readme import readme_commands; print("\n".join(readme_commands()))')
for i in "${!commands[@]}"; do
    echo "=== README command $((i + 1)): ${commands[$i]}"
    start=$SECONDS
    bash -c "${commands[$i]}"
    echo "=== command $((i + 1)) succeeded in $((SECONDS - start)) s"
done
