# Sourced by the shell drivers (POSIX sh): sets PY to $PYTHON when given, else the repository's
# .venv python, else `python` from PATH. The caller sets REPO to the repository root.
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY=python; fi
fi
