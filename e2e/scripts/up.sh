#!/usr/bin/env bash
# Starts packsmith's real end-to-end test bed and leaves it running in the background:
#   etcd + kube-apiserver (client-certificate auth, RBAC), two OCI registries (anonymous HTTP, and
#   HTTPS + htpasswd), and the upstream server (static files, git smart HTTP, fake GitHub API).
#
# usage: up.sh STATE_DIR      (STATE_DIR: absent, or any dir that holds no running bed)
#
# On success it writes STATE_DIR/env, one KEY=value a line, no quoting needed, and exits 0:
#   PACKSMITH_E2E_STATE_DIR         the state dir (absolute)
#   PACKSMITH_E2E_KUBECONFIG        admin kubeconfig (system:masters), everything embedded
#   PACKSMITH_E2E_CLIENT_CA_CRT     CA the apiserver trusts for client certs and that signed its
#   PACKSMITH_E2E_CLIENT_CA_KEY       serving cert: mint certs for other users with them (see
#                                     mint-user.sh); both empty with an external cluster
#   PACKSMITH_E2E_K8S_VERSION       gitVersion from the apiserver's /version
#   PACKSMITH_E2E_REGISTRY          host:port, anonymous HTTP registry
#   PACKSMITH_E2E_REGISTRY_TLS      host:port, HTTPS registry with basic auth
#   PACKSMITH_E2E_REGISTRY_TLS_CA   PEM of the CA that signed the HTTPS registry's cert
#   PACKSMITH_E2E_REGISTRY_USER     user of the HTTPS registry (packsmith)
#   PACKSMITH_E2E_REGISTRY_PASSWORD its password (random hex)
#   PACKSMITH_E2E_REGISTRY_TOKEN    host:port, plain-HTTP registry with Docker token auth
#   PACKSMITH_E2E_REGISTRY_TOKEN_USER      the one user its token server grants pull/push to
#   PACKSMITH_E2E_REGISTRY_TOKEN_PASSWORD  its password (random hex)
#   PACKSMITH_E2E_TOKEN_REALM       http://127.0.0.1:PORT/token, the token server (realm)
#   PACKSMITH_E2E_TOKEN_ISSUED_LOG  one JSON line per /token answer {"status","user","scopes"}
#   PACKSMITH_E2E_HTTP_URL          http://127.0.0.1:PORT/files, serving PACKSMITH_E2E_WWW_DIR
#   PACKSMITH_E2E_WWW_DIR
#   PACKSMITH_E2E_GIT_URL           http://127.0.0.1:PORT/git, serving bare repos in ..._GIT_DIR
#   PACKSMITH_E2E_GIT_DIR             (clone URL of GIT_DIR/demo.git: $PACKSMITH_E2E_GIT_URL/demo.git)
#   PACKSMITH_E2E_GITHUB_API_URL    http://127.0.0.1:PORT/github/api; releases come from
#   PACKSMITH_E2E_GITHUB_DIR          GITHUB_DIR/{owner}/{repo}/releases/{tag}.json
#   PACKSMITH_E2E_SSH_URL           ssh://root@127.0.0.1:PORT/<GIT_DIR>: sshd serving the same bare
#                                     repos (clone URL of demo.git: $PACKSMITH_E2E_SSH_URL/demo.git)
#   PACKSMITH_E2E_SSH_KEY           unencrypted ed25519 client key that sshd accepts
#   PACKSMITH_E2E_SSH_KNOWN_HOSTS   file with sshd's known_hosts line ([127.0.0.1]:PORT ssh-ed25519 ...)
#   PACKSMITH_E2E_STARTUP_SECONDS   wall time of this script
# Other paths tests may use: STATE_DIR/auth/token (create it to require auth on the upstream's
# private routes), STATE_DIR/logs/<component>.log, STATE_DIR/pids/<component>.pid, with components
# etcd, kube-apiserver, registry-plain, registry-tls, registry-token, token-server, upstream, sshd.
#
# Environment:
#   KUBECONFIG + PACKSMITH_E2E_USE_KUBECONFIG=1   use that cluster instead of starting one
#   KUBEBUILDER_ASSETS                            dir holding kube-apiserver and etcd; without it
#                                                 build-k8s.sh provides them (cached)
#   PACKSMITH_E2E_{ETCD,APISERVER,SERVICE}_TIMEOUT  readiness bounds in seconds (30, 60, 20)
#
# If a component does not become ready in time: "e2e: <component> failed to start; log: <path>"
# and the log's tail on stderr, everything started so far is stopped (STATE_DIR is kept for the
# logs; down.sh removes it), exit 1.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

t0=$(now)
STATE=$(state_dir_arg "${1:-}")
if compgen -G "$STATE/pids/*.pid" >/dev/null; then
  die "$STATE already holds a test bed; run down.sh $STATE first"
fi

ETCD_TIMEOUT=${PACKSMITH_E2E_ETCD_TIMEOUT:-30}
APISERVER_TIMEOUT=${PACKSMITH_E2E_APISERVER_TIMEOUT:-60}
SERVICE_TIMEOUT=${PACKSMITH_E2E_SERVICE_TIMEOUT:-20}
PORT_ATTEMPTS=3

# Everything this run creates for its servers is made anew: a stale etcd or registry storage from
# a kept (PACKSMITH_E2E_KEEP=1) earlier run would leak objects into this one.
rm -rf "$STATE/etcd" "$STATE/pki" "$STATE/apiserver" "$STATE/registry" "$STATE/upstream" "$STATE/env"
mkdir -p "$STATE"/{pids,logs,pki,www,git,github,upstream}
PKI=$STATE/pki

succeeded=0
cleanup() {
  ((succeeded)) || stop_all "$STATE" 3
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# A caller that stops reading our stderr must not kill us before cleanup: with a handler (not
# SIG_IGN, which the servers would inherit) a write just fails and the EXIT trap still runs.
trap ':' PIPE

# Waits for a component and, when it died because its port was taken after we probed it (another
# bed starting at the same moment), starts it again on new ports. START_FN takes 'first' or
# 'repick' (pick new ports).
bring_up() { # NAME TIMEOUT START_FN READY_FN
  local name=$1 timeout=$2 start_fn=$3 ready_fn=$4 attempt=1 rc
  while :; do
    rc=0
    wait_ready "$STATE" "$name" "$timeout" "$ready_fn" || rc=$?
    ((rc == 0)) && return 0
    if ((rc == 2 && attempt < PORT_ATTEMPTS)) && grep -q 'address already in use' "$STATE/logs/$name.log"; then
      log "$name: port taken, retrying on another"
      attempt=$((attempt + 1))
      "$start_fn" repick
      continue
    fi
    fail_component "$STATE" "$name"
    exit 1
  done
}

# --- Kubernetes --------------------------------------------------------------------------------

external_cluster=0
if [[ -n ${KUBECONFIG:-} && ${PACKSMITH_E2E_USE_KUBECONFIG:-} == 1 ]]; then
  external_cluster=1
elif [[ ${PACKSMITH_E2E_USE_KUBECONFIG:-} == 1 ]]; then
  log "PACKSMITH_E2E_USE_KUBECONFIG=1 but KUBECONFIG is unset: starting a cluster of our own"
fi

if ((external_cluster)); then
  # Point at the caller's kubeconfig rather than copying it: it may name cert files by relative
  # path. Checked before anything starts; its version is best effort (/version is public on most
  # clusters).
  KUBECONFIG_OUT=$(
    IFS=:
    out=()
    for f in $KUBECONFIG; do out+=("$(realpath -m -- "$f")"); done
    printf '%s' "${out[*]}"
  )
  [[ $KUBECONFIG_OUT =~ ^[A-Za-z0-9_./+:-]+$ ]] || die "KUBECONFIG path must match [A-Za-z0-9_./+:-]+"
  first_kubeconfig=${KUBECONFIG_OUT%%:*}
  server=$(sed -n 's/^[[:space:]]*server:[[:space:]]*//p' "$first_kubeconfig" 2>/dev/null | head -n 1 || true)
  if [[ -z $server || $(http_code "$server/version" -k) == 000 ]]; then
    printf 'e2e: kubernetes failed to start; log: %s\n' "$first_kubeconfig" >&2
    printf 'no cluster answers at "%s" (server of the first cluster in KUBECONFIG)\n' "$server" >&2
    exit 1
  fi
  K8S_VERSION=$(curl -sk --max-time 5 "$server/version" | sed -n 's/^ *"gitVersion": *"\([^"]*\)".*/\1/p' || true)
else
  if [[ -n ${KUBEBUILDER_ASSETS:-} ]]; then
    K8S_BIN=$KUBEBUILDER_ASSETS
  else
    K8S_BIN=$("$E2E_SCRIPTS/build-k8s.sh" | tail -n 1)
  fi
  for b in etcd kube-apiserver; do
    [[ -x $K8S_BIN/$b ]] || die "no executable $b in $K8S_BIN"
  done
fi

# One CA signs the apiserver's serving cert and every client cert, as kubeadm does: then a test
# that mints a user needs one CA, and the kubeconfig's CA is the same file.
setup_cluster_pki() {
  gen_ca "$PKI/ca.crt" "$PKI/ca.key" packsmith-e2e-ca
  gen_cert "$PKI/ca.crt" "$PKI/ca.key" "$PKI/apiserver.crt" "$PKI/apiserver.key" /CN=kube-apiserver serverAuth \
    "IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" &
  local serving=$!
  gen_cert "$PKI/ca.crt" "$PKI/ca.key" "$PKI/admin.crt" "$PKI/admin.key" /O=system:masters/CN=packsmith-e2e-admin clientAuth &
  local admin=$!
  gen_key "$PKI/sa.key"
  openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  wait_pids "$serving" "$admin"
}

start_etcd() {
  if [[ $1 == repick ]]; then
    { read -r ETCD_PORT; read -r ETCD_PEER_PORT; } < <(free_ports 2)
  fi
  rm -rf "$STATE/etcd"
  # --unsafe-no-fsync: the data dies with the bed, and fsync dominates etcd's latency on CI disks.
  launch "$STATE" etcd "$K8S_BIN/etcd" --name e2e --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "e2e=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --log-level warn
}
ready_etcd() { curl -sf --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }

kcurl() { # PATH -> body; admin client cert against our own apiserver
  curl -sf --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "https://127.0.0.1:$API_PORT$1"
}

start_apiserver() {
  if [[ $1 == repick ]]; then
    API_PORT=$(free_ports 1)
  fi
  mkdir -p "$STATE/apiserver"
  launch "$STATE" kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --cert-dir "$STATE/apiserver" --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --authorization-mode RBAC --service-cluster-ip-range 10.0.0.0/24 --allow-privileged=true \
    --endpoint-reconciler-type none
}
# /readyz can say ok a moment before the system namespaces exist; tests create objects in
# "default" at once, so wait for it too.
ready_apiserver() { [[ $(kcurl /readyz) == ok ]] && kcurl /api/v1/namespaces/default >/dev/null; }

# --- registries --------------------------------------------------------------------------------

configure_registry() { # plain|tls|token PORT
  local kind=$1 port=$2 rdir
  rdir=$(registry_dir "$STATE" "$kind")
  mkdir -p "$rdir/storage"
  echo "127.0.0.1:$port" >"$rdir/addr"
  {
    cat <<YML
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $rdir/storage
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  # Fixed, so upload sessions survive ctl.sh stop/start.
  secret: $(openssl rand -hex 16)
YML
    if [[ $kind == tls ]]; then
      cat <<YML
  tls:
    certificate: $rdir/server.crt
    key: $rdir/server.key
auth:
  htpasswd:
    realm: packsmith-e2e
    path: $rdir/htpasswd
YML
    elif [[ $kind == token ]]; then
      cat <<YML
auth:
  token:
    realm: http://127.0.0.1:$(<"$TOKEN_DIR/port")/token
    service: $TOKEN_SERVICE
    issuer: $TOKEN_ISSUER
    rootcertbundle: $TOKEN_DIR/signing.crt
YML
    fi
  } >"$rdir/config.yml"
}

setup_tls_registry_files() {
  local rdir
  rdir=$(registry_dir "$STATE" tls)
  mkdir -p "$rdir"
  # Its own CA, not the cluster's: a client that wrongly trusts the cluster CA must fail here.
  gen_ca "$rdir/ca.crt" "$rdir/ca.key" packsmith-e2e-registry-ca
  gen_cert "$rdir/ca.crt" "$rdir/ca.key" "$rdir/server.crt" "$rdir/server.key" /CN=localhost serverAuth \
    "IP:127.0.0.1,DNS:localhost"
  echo packsmith >"$rdir/user"
  openssl rand -hex 16 >"$rdir/password"
  htpasswd -Bbn packsmith "$(<"$rdir/password")" >"$rdir/htpasswd"
}

start_registry_plain() {
  if [[ $1 == repick ]]; then PLAIN_PORT=$(free_ports 1); fi
  configure_registry plain "$PLAIN_PORT"
  registry_start "$STATE" plain
}
start_registry_tls() {
  if [[ $1 == repick ]]; then TLS_PORT=$(free_ports 1); fi
  configure_registry tls "$TLS_PORT"
  registry_start "$STATE" tls
}
ready_registry_plain() { registry_ready "$STATE" plain; }
ready_registry_tls() { registry_ready "$STATE" tls; }

# --- token-auth registry: docker-registry with `auth: token` + e2e/upstream/token_server.py ---

TOKEN_DIR=$STATE/token
TOKEN_SERVICE=packsmith-e2e-registry
TOKEN_ISSUER=packsmith-e2e-token-issuer

# The signing certificate is self-signed and is the registry's whole rootcertbundle: tokens carry
# it as their x5c chain, which the registry verifies against that bundle.
setup_token_files() {
  rm -rf "$TOKEN_DIR"
  mkdir -p "$TOKEN_DIR" "$(registry_dir "$STATE" token)/storage"
  gen_ca "$TOKEN_DIR/signing.crt" "$TOKEN_DIR/signing.key" packsmith-e2e-token-signer
  echo packsmith-token >"$TOKEN_DIR/user"
  openssl rand -hex 16 >"$TOKEN_DIR/password"
  : >"$TOKEN_DIR/issued.log"
}

start_token_server() {
  rm -f "$TOKEN_DIR/port"
  launch "$STATE" token-server python3 "$E2E_UPSTREAM/token_server.py" --port 0 --port-file "$TOKEN_DIR/port" \
    --key "$TOKEN_DIR/signing.key" --cert "$TOKEN_DIR/signing.crt" --issuer "$TOKEN_ISSUER" \
    --service "$TOKEN_SERVICE" --user-file "$TOKEN_DIR/user" --password-file "$TOKEN_DIR/password" \
    --issued-log "$TOKEN_DIR/issued.log" --log "$STATE/logs/token-server.log"
}
ready_token_server() {
  [[ -s $TOKEN_DIR/port ]] && [[ $(http_code "http://127.0.0.1:$(<"$TOKEN_DIR/port")/healthz") == 200 ]]
}

# Needs the token server's port (its realm), so it starts once that server is ready.
start_registry_token() {
  if [[ $1 == repick ]]; then TOKEN_REG_PORT=$(free_ports 1); fi
  configure_registry token "$TOKEN_REG_PORT"
  registry_start "$STATE" token
}
# Ready when /v2/ challenges for a token and the token server's token is accepted.
ready_registry_token() {
  local addr tok
  addr=$(<"$(registry_dir "$STATE" token)/addr")
  [[ $(http_code "http://$addr/v2/") == 401 ]] || return 1
  tok=$(curl -sf --max-time 2 -u "$(<"$TOKEN_DIR/user"):$(<"$TOKEN_DIR/password")" \
    "http://127.0.0.1:$(<"$TOKEN_DIR/port")/token?service=$TOKEN_SERVICE" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
  [[ -n $tok && $(http_code "http://$addr/v2/" -H "Authorization: Bearer $tok") == 200 ]]
}

# --- upstream ----------------------------------------------------------------------------------

# The kernel picks its port (it reports it in a file), so it cannot lose a port race.
start_upstream() {
  rm -f "$STATE/upstream/port"
  launch "$STATE" upstream python3 "$E2E_UPSTREAM/server.py" --state-dir "$STATE" \
    --port 0 --port-file "$STATE/upstream/port" --log "$STATE/logs/upstream.log"
}
ready_upstream() {
  [[ -s $STATE/upstream/port ]] && [[ $(http_code "http://127.0.0.1:$(<"$STATE/upstream/port")/healthz") == 200 ]]
}

# --- sshd: git over ssh to the same bare repos ------------------------------------------------

# Keys of its own (host and client) in the state dir; root logs in with the client key and runs
# the bed's git-upload-pack on GIT_DIR, as a git host would.
SSHD_DIR=$STATE/sshd
setup_sshd_files() {
  rm -rf "$SSHD_DIR"
  mkdir -p "$SSHD_DIR"
  ssh-keygen -q -t ed25519 -N '' -C packsmith-e2e-host -f "$SSHD_DIR/host_ed25519"
  ssh-keygen -q -t ed25519 -N '' -C packsmith-e2e-client -f "$SSHD_DIR/client_ed25519"
  cp "$SSHD_DIR/client_ed25519.pub" "$SSHD_DIR/authorized_keys"
}
start_sshd() {
  if [[ $1 == repick ]]; then SSH_PORT=$(free_ports 1); fi
  local sshd
  sshd=$(PATH=$PATH:/usr/sbin:/sbin command -v sshd) || die "no sshd: run e2e/scripts/install-deps.sh"
  # sshd refuses to start without its privilege separation dir.
  mkdir -p /run/sshd
  cat >"$SSHD_DIR/sshd_config" <<CFG
ListenAddress 127.0.0.1:$SSH_PORT
HostKey $SSHD_DIR/host_ed25519
PidFile $SSHD_DIR/sshd.pid
AuthorizedKeysFile $SSHD_DIR/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
AcceptEnv GIT_PROTOCOL
CFG
  echo "[127.0.0.1]:$SSH_PORT $(cut -d' ' -f1,2 "$SSHD_DIR/host_ed25519.pub")" >"$SSHD_DIR/known_hosts"
  # -D: stays in the foreground, so launch's pid is sshd's; -e: logs to the log file.
  launch "$STATE" sshd "$sshd" -D -e -f "$SSHD_DIR/sshd_config"
}
ready_sshd() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$SSH_PORT && head -c 4 <&3" 2>/dev/null | grep -q '^SSH-'
}

# --- bring-up: everything at once, then wait in dependency order ---------------------------

{ read -r ETCD_PORT; read -r ETCD_PEER_PORT; read -r API_PORT; read -r PLAIN_PORT; read -r TLS_PORT; } < <(free_ports 5)
pki_jobs=()
if ((!external_cluster)); then
  setup_cluster_pki &
  pki_jobs+=($!)
fi
setup_tls_registry_files &
pki_jobs+=($!)
SSH_PORT=$(free_ports 1)
setup_sshd_files &
pki_jobs+=($!)
setup_token_files &
pki_jobs+=($!)
TOKEN_REG_PORT=$(free_ports 1)
wait_pids "${pki_jobs[@]}"

# The apiserver starts with etcd rather than after it: its own initialisation overlaps etcd's
# start-up (about 0.8 s saved on 2 cores), and it retries etcd until etcd answers.
if ((!external_cluster)); then
  start_etcd first
  start_apiserver first
fi
start_registry_plain first
start_registry_tls first
start_upstream
start_sshd first
start_token_server

if ((!external_cluster)); then
  etcd_port_before=$ETCD_PORT
  bring_up etcd "$ETCD_TIMEOUT" start_etcd ready_etcd
  if [[ $ETCD_PORT != "$etcd_port_before" ]]; then
    stop_process "$STATE" kube-apiserver 3
    start_apiserver first
  fi
fi
bring_up registry-plain "$SERVICE_TIMEOUT" start_registry_plain ready_registry_plain
bring_up registry-tls "$SERVICE_TIMEOUT" start_registry_tls ready_registry_tls
bring_up upstream "$SERVICE_TIMEOUT" start_upstream ready_upstream
bring_up sshd "$SERVICE_TIMEOUT" start_sshd ready_sshd
bring_up token-server "$SERVICE_TIMEOUT" start_token_server ready_token_server
start_registry_token first
bring_up registry-token "$SERVICE_TIMEOUT" start_registry_token ready_registry_token

if ((external_cluster)); then
  CA_CRT="" CA_KEY=""
else
  bring_up kube-apiserver "$APISERVER_TIMEOUT" start_apiserver ready_apiserver
  K8S_VERSION=$(kcurl /version | sed -n 's/^ *"gitVersion": *"\([^"]*\)".*/\1/p')
  KUBECONFIG_OUT=$STATE/kubeconfig
  write_kubeconfig "$KUBECONFIG_OUT" "https://127.0.0.1:$API_PORT" "$PKI/ca.crt" "$PKI/admin.crt" "$PKI/admin.key" \
    packsmith-e2e-admin
  CA_CRT=$PKI/ca.crt CA_KEY=$PKI/ca.key
fi

[[ $K8S_VERSION =~ ^[A-Za-z0-9_.+-]+$ ]] || K8S_VERSION=unknown
UP_PORT=$(<"$STATE/upstream/port")
TLS_DIR=$(registry_dir "$STATE" tls)
elapsed=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')

# Written last and renamed into place: a test that polls for env never reads half of it.
cat >"$STATE/env.tmp" <<ENV
PACKSMITH_E2E_STATE_DIR=$STATE
PACKSMITH_E2E_KUBECONFIG=$KUBECONFIG_OUT
PACKSMITH_E2E_CLIENT_CA_CRT=$CA_CRT
PACKSMITH_E2E_CLIENT_CA_KEY=$CA_KEY
PACKSMITH_E2E_K8S_VERSION=$K8S_VERSION
PACKSMITH_E2E_REGISTRY=$(<"$(registry_dir "$STATE" plain)/addr")
PACKSMITH_E2E_REGISTRY_TLS=$(<"$TLS_DIR/addr")
PACKSMITH_E2E_REGISTRY_TLS_CA=$TLS_DIR/ca.crt
PACKSMITH_E2E_REGISTRY_USER=$(<"$TLS_DIR/user")
PACKSMITH_E2E_REGISTRY_PASSWORD=$(<"$TLS_DIR/password")
PACKSMITH_E2E_REGISTRY_TOKEN=$(<"$(registry_dir "$STATE" token)/addr")
PACKSMITH_E2E_REGISTRY_TOKEN_USER=$(<"$TOKEN_DIR/user")
PACKSMITH_E2E_REGISTRY_TOKEN_PASSWORD=$(<"$TOKEN_DIR/password")
PACKSMITH_E2E_TOKEN_REALM=http://127.0.0.1:$(<"$TOKEN_DIR/port")/token
PACKSMITH_E2E_TOKEN_ISSUED_LOG=$TOKEN_DIR/issued.log
PACKSMITH_E2E_HTTP_URL=http://127.0.0.1:$UP_PORT/files
PACKSMITH_E2E_WWW_DIR=$STATE/www
PACKSMITH_E2E_GIT_URL=http://127.0.0.1:$UP_PORT/git
PACKSMITH_E2E_GIT_DIR=$STATE/git
PACKSMITH_E2E_GITHUB_API_URL=http://127.0.0.1:$UP_PORT/github/api
PACKSMITH_E2E_GITHUB_DIR=$STATE/github
PACKSMITH_E2E_SSH_URL=ssh://root@127.0.0.1:$SSH_PORT$STATE/git
PACKSMITH_E2E_SSH_KEY=$SSHD_DIR/client_ed25519
PACKSMITH_E2E_SSH_KNOWN_HOSTS=$SSHD_DIR/known_hosts
PACKSMITH_E2E_STARTUP_SECONDS=$elapsed
ENV
mv "$STATE/env.tmp" "$STATE/env"
succeeded=1
log "test bed up in ${elapsed}s: $STATE/env"
