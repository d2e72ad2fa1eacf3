#!/usr/bin/env bash
# Mints a client certificate for another Kubernetes user of a running test bed and writes a
# kubeconfig for it, so a test can check what RBAC lets that user do. Prints the kubeconfig's path.
#
# usage: mint-user.sh STATE_DIR USER [GROUP...]
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE=$(state_dir_arg "${1:-}")
user=${2:-}
shift 2 || true
[[ $user =~ ^[A-Za-z0-9_.:@-]+$ ]] || die "usage: mint-user.sh STATE_DIR USER [GROUP...] (USER: [A-Za-z0-9_.:@-]+)"
[[ -f $STATE/pki/ca.key ]] || die "$STATE has no cluster CA (not started by up.sh, or an external cluster)"

subject=""
for g in "$@"; do
  [[ $g =~ ^[A-Za-z0-9_.:@-]+$ ]] || die "bad group '$g'"
  subject+="/O=$g"
done
subject+="/CN=$user"

dir=$STATE/users
mkdir -p "$dir"
file=${user//[:@]/_}
gen_cert "$STATE/pki/ca.crt" "$STATE/pki/ca.key" "$dir/$file.crt" "$dir/$file.key" "$subject" clientAuth
server=$(sed -n 's/^[[:space:]]*server:[[:space:]]*//p' "$STATE/kubeconfig" | head -n 1)
write_kubeconfig "$dir/$file.kubeconfig" "$server" "$STATE/pki/ca.crt" "$dir/$file.crt" "$dir/$file.key" "$user"
printf '%s\n' "$dir/$file.kubeconfig"
