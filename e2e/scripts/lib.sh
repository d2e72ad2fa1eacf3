# shellcheck shell=bash
# Helpers shared by up.sh, down.sh, ctl.sh and mint-user.sh. Sourced, never run.

# shellcheck disable=SC2034 # read by the scripts that source this file
E2E_SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034
E2E_UPSTREAM=$(cd "$E2E_SCRIPTS/../upstream" && pwd)

log() { printf 'e2e: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

now() { date +%s.%N; }

# `wait` alone ignores its jobs' exit codes; this fails (and so trips set -e) if any one failed.
wait_pids() { # PID...
  local pid rc=0
  for pid in "$@"; do wait "$pid" || rc=1; done
  return "$rc"
}

# Turns STATE_DIR into an absolute path and refuses characters that would need quoting, because
# every value of STATE_DIR/env must be safe to source and to split on '=' without a shell.
state_dir_arg() {
  local dir=${1:-}
  [[ -n $dir ]] || die "usage: $(basename "$0") STATE_DIR ..."
  case $dir in /*) ;; *) dir="$PWD/$dir" ;; esac
  dir=$(realpath -m -- "$dir")
  [[ $dir =~ ^[A-Za-z0-9_./+-]+$ ]] || die "STATE_DIR must match [A-Za-z0-9_./+-]+ (got '$dir')"
  printf '%s\n' "$dir"
}

# Prints N distinct free TCP ports on 127.0.0.1, one a line. They are drawn from 20000-32767,
# below Linux's ephemeral range, so that an outgoing connection of some other process cannot take
# one of them between this probe and the server's own bind (bind(0) would hand out exactly the
# ports that outgoing connections use). All probe sockets stay open until all are picked, so the
# ports are distinct.
free_ports() {
  python3 - "$1" <<'PY'
import random, socket, sys

want = int(sys.argv[1])
held, ports = [], []
candidates = random.sample(range(20000, 32768), 2000)
for port in candidates:
    if len(ports) == want:
        break
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        continue
    held.append(s)
    ports.append(port)
while len(ports) < want:  # the range is crowded: fall back to the kernel's choice
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    held.append(s)
    ports.append(s.getsockname()[1])
print("\n".join(map(str, ports)))
PY
}

# A pid file is trusted only while that pid still runs a command line naming the state dir: pids
# get reused, and a stale file must never make us signal some unrelated process.
pid_of() { # STATE_DIR NAME
  local file="$1/pids/$2.pid" pid
  [[ -f $file ]] || return 1
  pid=$(<"$file")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  # The process may exit between any two of these reads: silence that, the answer is "gone".
  { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -- "$1" || return 1
  # A zombie (exited, not yet reaped by its parent) is gone for our purposes.
  [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || return 1
  printf '%s\n' "$pid"
}

# Starts a server detached from the caller: its own session (no SIGHUP/SIGINT from the caller's
# terminal) and no inherited stdio, so a test that runs up.sh with piped output is not left
# waiting for EOF on a pipe that the servers keep open.
launch() { # STATE_DIR NAME CMD...
  local dir=$1 name=$2
  shift 2
  mkdir -p "$dir/pids" "$dir/logs"
  printf '\n=== %s: %s\n' "$(date -u +%FT%TZ)" "$*" >>"$dir/logs/$name.log"
  setsid "$@" </dev/null >>"$dir/logs/$name.log" 2>&1 &
  echo $! >"$dir/pids/$name.pid"
  # Not our job to report: bash would print "Killed ..." when down.sh or a cleanup stops it.
  disown $!
}

# Sends TERM (and CONT, so a paused process can act on it), waits up to $3 seconds, then KILLs.
stop_process() { # STATE_DIR NAME [GRACE_SECONDS]
  local dir=$1 name=$2 grace=${3:-5} pid deadline
  pid=$(pid_of "$dir" "$name") || { rm -f "$dir/pids/$name.pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  kill -CONT "$pid" 2>/dev/null || true
  deadline=$(($(date +%s) + grace))
  while pid_of "$dir" "$name" >/dev/null && (($(date +%s) < deadline)); do sleep 0.1; done
  if pid_of "$dir" "$name" >/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
    while pid_of "$dir" "$name" >/dev/null; do sleep 0.05; done
  fi
  rm -f "$dir/pids/$name.pid"
}

# Everything but etcd at once, so the grace periods overlap; etcd last, because an apiserver whose
# etcd is gone stalls its shutdown until it is killed.
stop_all() { # STATE_DIR GRACE_SECONDS
  local dir=$1 grace=$2 f name pids=()
  for f in "$dir"/pids/*.pid; do
    [[ -e $f ]] || continue
    name=$(basename "$f" .pid)
    [[ $name == etcd ]] && continue
    stop_process "$dir" "$name" "$grace" &
    pids+=($!)
  done
  ((${#pids[@]} == 0)) || wait "${pids[@]}" || true
  stop_process "$dir" etcd "$grace"
}

fail_component() { # STATE_DIR COMPONENT
  local logf="$1/logs/$2.log"
  {
    printf 'e2e: %s failed to start; log: %s\n' "$2" "$logf"
    tail -n 30 -- "$logf" 2>/dev/null || true
  } >&2
}

# Polls CHECK (a command) every 0.1 s until it succeeds. Returns 2 at once if the process died
# (no point waiting out the timeout), 1 on timeout.
wait_ready() { # STATE_DIR NAME TIMEOUT_SECONDS CHECK...
  local dir=$1 name=$2 timeout=$3 deadline
  shift 3
  deadline=$(($(date +%s) + timeout))
  while :; do
    "$@" 2>/dev/null && return 0
    pid_of "$dir" "$name" >/dev/null || return 2
    (($(date +%s) < deadline)) || return 1
    sleep 0.1
  done
}

http_code() { # URL CURL_ARGS... -> prints the status code (000 when nothing answered)
  local url=$1
  shift
  curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url" || true
}

# --- registries ------------------------------------------------------------------------------

registry_dir() { printf '%s/registry/%s\n' "$1" "$2"; }

registry_start() { # STATE_DIR plain|tls
  local dir=$1 kind=$2
  launch "$dir" "registry-$kind" docker-registry serve "$(registry_dir "$dir" "$kind")/config.yml"
}

registry_ready() { # STATE_DIR plain|tls
  local dir=$1 kind=$2 rdir addr
  rdir=$(registry_dir "$dir" "$kind")
  addr=$(<"$rdir/addr")
  if [[ $kind == plain ]]; then
    [[ $(http_code "http://$addr/v2/") == 200 ]]
  else
    [[ $(http_code "https://$addr/v2/" --cacert "$rdir/ca.crt") == 401 ]] &&
      [[ $(http_code "https://$addr/v2/" --cacert "$rdir/ca.crt" -u "$(<"$rdir/user"):$(<"$rdir/password")") == 200 ]]
  fi
}

# --- PKI -------------------------------------------------------------------------------------
# ECDSA P-256 throughout: generating it is instant (RSA would cost seconds of start-up), and
# rustls, Go and curl all accept it. Extensions are spelled out because rustls/webpki rejects
# certificates without an explicit CA flag on the CA and serverAuth/SAN on the leaf.

gen_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

gen_ca() { # CRT KEY CN
  gen_key "$2"
  openssl req -x509 -new -key "$2" -sha256 -days 3650 -out "$1" -config <(
    cat <<CNF
[req]
distinguished_name = dn
prompt = no
x509_extensions = ext
[dn]
CN = $3
[ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
CNF
  )
}

# SUBJECT is openssl's /O=../CN=.. form; USAGE is serverAuth or clientAuth; SAN may be empty.
gen_cert() { # CA_CRT CA_KEY CRT KEY SUBJECT USAGE [SAN]
  local ca_crt=$1 ca_key=$2 crt=$3 key=$4 subject=$5 usage=$6 san=${7:-}
  gen_key "$key"
  openssl req -new -key "$key" -subj "$subject" -out "$crt.csr" 2>/dev/null
  openssl x509 -req -in "$crt.csr" -CA "$ca_crt" -CAkey "$ca_key" -set_serial "0x$(openssl rand -hex 16)" \
    -days 3650 -sha256 -out "$crt" -extensions ext -extfile <(
      printf '[ext]\nbasicConstraints = critical,CA:FALSE\n'
      printf 'keyUsage = critical,digitalSignature,keyEncipherment\n'
      printf 'extendedKeyUsage = %s\n' "$usage"
      printf 'subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid,issuer\n'
      [[ -z $san ]] || printf 'subjectAltName = %s\n' "$san"
    ) 2>/dev/null
  rm -f "$crt.csr"
}

# A kubeconfig with everything embedded, so it stays valid wherever the file is copied.
write_kubeconfig() { # FILE SERVER CA_CRT CLIENT_CRT CLIENT_KEY USER
  local tmp="$1.tmp"
  cat >"$tmp" <<KC
apiVersion: v1
kind: Config
clusters:
- name: packsmith-e2e
  cluster:
    server: $2
    certificate-authority-data: $(base64 -w0 "$3")
users:
- name: $6
  user:
    client-certificate-data: $(base64 -w0 "$4")
    client-key-data: $(base64 -w0 "$5")
contexts:
- name: packsmith-e2e
  context:
    cluster: packsmith-e2e
    user: $6
    namespace: default
current-context: packsmith-e2e
preferences: {}
KC
  chmod 600 "$tmp"
  mv "$tmp" "$1"
}
