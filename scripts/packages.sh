# Sourced by scripts/test and scripts/dev: makes sure Debian packages are installed,
# installing them when running as root, else printing the apt line and stopping.

# What building teegate needs (pingora's zlib-ng needs cmake; etcd-client's protos, protoc).
BUILD_PACKAGES=(build-essential pkg-config cmake protobuf-compiler)

ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  if [ "$(id -u)" = 0 ]; then
    echo "installing: ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "missing system packages; install them with:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
}
