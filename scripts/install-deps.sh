# Shared by quickstart.sh and test.sh (sourced, not run): installs the programs a script
# needs when they are missing. On Debian and Ubuntu it uses apt-get (as root, or through
# sudo), saying in one line what it installs and why before it does; elsewhere it stops
# with the command to run.
#
#   ensure_tools WHO WHY TOOL:DEBIAN_PACKAGE:OTHER_PACKAGE ...
# e.g. ensure_tools quickstart "the local Redis" redis-server:redis-server:redis
ensure_tools() {
  local who=$1 why=$2 spec tool debian other
  shift 2
  local missing=() debian_packages=() other_packages=()
  for spec in "$@"; do
    IFS=: read -r tool debian other <<<"$spec"
    command -v "$tool" >/dev/null 2>&1 && continue
    missing+=("$tool")
    [[ " ${debian_packages[*]} " == *" $debian "* ]] || debian_packages+=("$debian")
    [[ " ${other_packages[*]} " == *" $other "* ]] || other_packages+=("$other")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    local manager="your package manager's install command for: ${other_packages[*]}"
    command -v dnf >/dev/null 2>&1 && manager="sudo dnf install ${other_packages[*]}"
    command -v brew >/dev/null 2>&1 && manager="brew install ${other_packages[*]}"
    echo "$who: ${missing[*]} missing ($why); run: $manager" >&2
    exit 2
  fi
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
      echo "$who: ${missing[*]} missing ($why); as root run: apt-get install ${debian_packages[*]}" >&2
      exit 2
    }
    sudo=(sudo)
  fi
  echo "$who: installing ${debian_packages[*]} with apt-get ($why)"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${debian_packages[@]}" >/dev/null
}

# Stops with a pointer to rustup when cargo is missing.
ensure_cargo() {
  command -v cargo >/dev/null 2>&1 && return 0
  echo "$1: cargo is missing; install Rust: https://rustup.rs" >&2
  exit 2
}
