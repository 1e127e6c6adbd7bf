#!/usr/bin/env bash
# Run the whole test suite (tests/ and compat_tests/) with the project's venv.
# Extra arguments go to pytest (e.g. scripts/test.sh -x -k tcp).
#
# pytest's exit code 5 ("no tests collected") is turned into a failure: the
# suite always has tests, so collecting none means they vanished (a broken
# conftest, a moved folder) and must not pass CI silently.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

if [[ ! -x .venv/bin/python ]]; then
    echo "test.sh: .venv is missing: run scripts/setup.sh first" >&2
    exit 1
fi

# What to collect; overridable only so that tests/test_setup.py can check the
# exit-5 handling on an empty folder.
read -r -a paths <<<"${BPF_IPTABLES_TEST_PATHS:-tests compat_tests}"

status=0
.venv/bin/python -m pytest "${paths[@]}" "$@" || status=$?
if [[ $status -eq 5 ]]; then
    echo "test.sh: pytest collected no tests: treating as a failure" >&2
    exit 1
fi
exit "$status"
