#!/usr/bin/env bash
# Writes the Secrets the manifests reference, as YAML on stdout (apply it, or seal/encrypt it first):
#   sandbox-provider-token    key token:  the orchestrator -> provider credential
#   sandbox-tenant-tokens     key tokens: one "token=tenant" line per TENANT argument
#   docker-engine-client-tls  ca.pem, cert.pem, key.pem: the providers' client identity for the engine
#   docker-engine-server-tls  ca.pem, cert.pem, key.pem: the engine's server identity (components/docker-engine)
# The new client tokens are printed on stderr, once: hand each to its tenant's service.
#
# Usage: deploy/k8s/make-secrets.sh NAMESPACE TENANT... > secrets.yaml
# Environment: ENGINE_HOSTS  extra names/IPs for the engine's certificate, comma-separated (an engine
#              outside the cluster: its DNS name); DAYS  certificate lifetime (default 365).
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,12p' "$0" >&2
  exit 2
fi
namespace=$1
shift
for tool in openssl kubectl; do
  command -v "$tool" >/dev/null || { echo "$tool is missing" >&2; exit 1; }
done
days=${DAYS:-365}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
token() { openssl rand -base64 33 | tr '+/' '-_'; }

sans="DNS:docker-engine,DNS:docker-engine.$namespace,DNS:docker-engine.$namespace.svc"
sans+=",DNS:docker-engine.$namespace.svc.cluster.local"
IFS=',' read -ra extra <<<"${ENGINE_HOSTS:-}"
for host in "${extra[@]}"; do
  [[ -z $host ]] && continue
  if [[ $host =~ ^[0-9.]+$|: ]]; then sans+=",IP:$host"; else sans+=",DNS:$host"; fi
done

(
  cd "$dir"
  openssl req -x509 -newkey rsa:3072 -nodes -days "$days" -subj "/CN=sandbox docker engine CA" \
    -keyout ca-key.pem -out ca.pem 2>/dev/null
  openssl req -newkey rsa:3072 -nodes -subj "/CN=docker-engine" -keyout server-key.pem -out server.csr 2>/dev/null
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days "$days" -out server.pem \
    -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$sans") 2>/dev/null
  openssl req -newkey rsa:3072 -nodes -subj "/CN=provider-docker" -keyout client-key.pem -out client.csr 2>/dev/null
  openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days "$days" -out client.pem \
    -extfile <(printf 'extendedKeyUsage=clientAuth\n') 2>/dev/null
)

secret() { kubectl create secret generic "$@" --namespace "$namespace" --dry-run=client -o yaml; }
tenants=""
for tenant in "$@"; do
  t=$(token)
  tenants+="$t=$tenant"$'\n'
  echo "tenant $tenant: token $t" >&2
done
secret sandbox-provider-token --from-literal=token="$(token)"
echo ---
secret sandbox-tenant-tokens --from-literal=tokens="$tenants"
echo ---
secret docker-engine-client-tls \
  --from-file=ca.pem="$dir/ca.pem" --from-file=cert.pem="$dir/client.pem" --from-file=key.pem="$dir/client-key.pem"
echo ---
secret docker-engine-server-tls \
  --from-file=ca.pem="$dir/ca.pem" --from-file=cert.pem="$dir/server.pem" --from-file=key.pem="$dir/server-key.pem"
