# Sourced by ci/test.sh and ci/nightly (with $cache set, after ci/litestream.sh): installs
# and starts the S3-compatible servers on free loopback ports, stops them when the sourcing
# script exits, and exports SLUICE_S3_* and SLUICE_MOTO_ENDPOINT.
# s3s-fs (checks SigV4, keeps data on disk) is the default server; moto (memory only,
# atomic conditional writes) judges the conditional-put race cases.
s3s="$cache/s3s/bin/s3s-fs"
if [ ! -x "$s3s" ]; then
  echo "ci: building s3s-fs 0.14.1 into $cache/s3s (about 2 minutes)"
  cargo install s3s-fs@0.14.1 --locked --features binary --root "$cache/s3s" --quiet
fi
moto="$cache/venv/bin/moto_server"
if [ ! -x "$moto" ]; then
  echo "ci: installing moto[server] 5.2.5 into $cache/venv"
  "$cache/venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]==5.2.5'
fi
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() { # name port pid
  for _ in $(seq 1 300); do
    if (echo > "/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
    if ! kill -0 "$3" 2>/dev/null; then echo "ci: $1 exited early" >&2; return 1; fi
    sleep 0.1
  done
  echo "ci: $1 did not listen on port $2" >&2
  return 1
}
servers=()
s3_data=$(mktemp -d)
cleanup() {
  for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${servers[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$s3_data"
}
trap cleanup EXIT

export SLUICE_S3_BUCKET=sluice-test SLUICE_S3_ACCESS_KEY=sluice-ci-key
export SLUICE_S3_SECRET_KEY="sluice-ci-secret-$RANDOM$RANDOM"
mkdir -p "$s3_data/root/$SLUICE_S3_BUCKET"
port=$(free_port)
env -u AWS_CA_BUNDLE "$s3s" --host 127.0.0.1 --port "$port" \
  --access-key "$SLUICE_S3_ACCESS_KEY" --secret-key "$SLUICE_S3_SECRET_KEY" \
  "$s3_data/root" >"$s3_data/s3s.log" 2>&1 </dev/null &
servers+=($!)
wait_port s3s-fs "$port" "$!" || { cat "$s3_data/s3s.log" >&2; exit 1; }
export SLUICE_S3_ENDPOINT="http://127.0.0.1:$port"

port=$(free_port)
env -u AWS_CA_BUNDLE "$moto" -H 127.0.0.1 -p "$port" >"$s3_data/moto.log" 2>&1 </dev/null &
servers+=($!)
wait_port moto_server "$port" "$!" || { cat "$s3_data/moto.log" >&2; exit 1; }
export SLUICE_MOTO_ENDPOINT="http://127.0.0.1:$port"
echo "ci: s3s-fs at $SLUICE_S3_ENDPOINT, moto at $SLUICE_MOTO_ENDPOINT"
