# Sourced by scripts/*.sh: create .venv with Python >= 3.11 and install voc-jax with extras.
# VOC_JAX_PYTHON overrides the interpreter used to create it.
ensure_venv() {
  local extras="$1"
  local py="${VOC_JAX_PYTHON:-python3}"
  if [ ! -x .venv/bin/python ]; then
    "$py" -c 'import sys; assert sys.version_info >= (3, 11), "voc-jax needs Python >= 3.11"'
    "$py" -m venv .venv
  fi
  # shellcheck disable=SC1091
  source .venv/bin/activate
  local stamp=".venv/.installed-$extras"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    python -m pip install --quiet --upgrade pip
    python -m pip install --quiet -e ".[$extras]"
    touch "$stamp"
  fi
}
