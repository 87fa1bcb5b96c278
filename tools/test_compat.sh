#!/usr/bin/env bash
# `make test-compat`: the drop-in and proxy tests against the oldest and the newest diffusers, transformers and
# huggingface_hub that pyproject.toml's ranges allow, each in a fresh venv built from the package registry.
# Not part of CI's time budget (about 10 minutes per venv on 2 cores); run it before changing a range and
# record the result in README.md, "Compatibility".
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
WORK=${COMPAT_DIR:-/tmp/safeloader-compat}
TESTS=${COMPAT_TESTS:-tests/test_dropin.py tests/test_proxy_pipelines.py tests/test_proxy_semantics.py}
mkdir -p "$WORK"
status=0
: > "$WORK/results.txt"
for flavour in ${COMPAT_FLAVOURS:-oldest newest}; do
    venv="$WORK/$flavour"
    rm -rf "$venv"
    "$PY" -m venv "$venv"
    # Test tools are not part of any range: the newest are fine for both flavours.
    if ! "$venv/bin/pip" install -q -c "constraints/$flavour.txt" -e '.[transformers]' \
        pytest pytest-timeout hypothesis 'peft>=0.17' 2> "$WORK/$flavour-install.log"; then
        echo "$flavour: install failed, see $WORK/$flavour-install.log" | tee -a "$WORK/results.txt"
        status=1
        continue
    fi
    versions=$("$venv/bin/python" - <<'PYEOF'
from importlib.metadata import version
print(", ".join(f"{name} {version(name)}" for name in ("torch", "diffusers", "transformers", "huggingface_hub")))
PYEOF
)
    # PYTHONPATH: the sandboxed worker runs this checkout's code, as in `make test`.
    PYTHONPATH="$PWD" "$venv/bin/python" -m pytest -q -p no:cacheprovider $TESTS > "$WORK/$flavour-tests.log" 2>&1
    rc=$?
    [ $rc -eq 0 ] || status=1
    summary=$(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed)' "$WORK/$flavour-tests.log" | tail -1 | tr -d '=')
    echo "$flavour: $versions: ${summary# } (exit $rc)" | tee -a "$WORK/results.txt"
done
exit $status
