#!/usr/bin/env bash
# Writes the Secrets the manifests reference, as YAML on stdout (apply it, or seal/encrypt it first):
#   sandbox-provider-token    key token:  the orchestrator -> provider credential
#   sandbox-tenant-tokens     key tokens: one "token=tenant" line per TENANT argument
#   sandbox-state-keys        key keys:   the providers' key for sealing task state kept in sandboxes
#   docker-engine-client-tls  ca.pem, cert.pem, key.pem: the providers' client identity for the engine
#   docker-engine-server-tls  ca.pem, cert.pem, key.pem: the engine's server identity (components/docker-engine)
#   provider-e2b-credentials      E2B_API_KEY                                  (components/provider-e2b)
#   provider-daytona-credentials  DAYTONA_API_KEY                              (components/provider-daytona)
#   provider-vercel-credentials   VERCEL_TOKEN, VERCEL_TEAM_ID, VERCEL_PROJECT_ID (components/provider-vercel)
# The cloud credentials are PLACEHOLDERS ("replace-me-..."), never real values: put the real ones in
# before those providers can work (until then their readiness stays NOT_SERVING), e.g.
#   kubectl -n NAMESPACE create secret generic provider-e2b-credentials --from-literal=E2B_API_KEY=... \
#     --dry-run=client -o yaml | kubectl apply -f -
# Applying this script's output again overwrites real credentials with placeholders (and rotates every
# token): leave the cloud Secrets out with CLOUD_PROVIDERS= once they hold real values.
# The new client tokens are printed on stderr, once: hand each to its tenant's service.
#
# Usage: deploy/k8s/make-secrets.sh NAMESPACE TENANT... > secrets.yaml
# Environment: ENGINE_HOSTS  extra names/IPs for the engine's certificate, comma-separated (an engine
#              outside the cluster: its DNS name); DAYS  certificate lifetime (default 365);
#              CLOUD_PROVIDERS  the cloud providers to write placeholder credentials for (default
#              "e2b daytona vercel"; empty: none).
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,23p' "$0" >&2
  exit 2
fi
cloud_providers=${CLOUD_PROVIDERS-e2b daytona vercel}
for provider in $cloud_providers; do
  case $provider in
    e2b | daytona | vercel) ;;
    *) echo "CLOUD_PROVIDERS: unknown provider $provider (e2b, daytona, vercel)" >&2; exit 2 ;;
  esac
done
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
secret sandbox-state-keys --from-literal=keys="$(token)"
echo ---
secret docker-engine-client-tls \
  --from-file=ca.pem="$dir/ca.pem" --from-file=cert.pem="$dir/client.pem" --from-file=key.pem="$dir/client-key.pem"
echo ---
secret docker-engine-server-tls \
  --from-file=ca.pem="$dir/ca.pem" --from-file=cert.pem="$dir/server.pem" --from-file=key.pem="$dir/server-key.pem"
# Placeholders only: this script never sees a cloud credential.
for provider in $cloud_providers; do
  case $provider in
    e2b) keys=(E2B_API_KEY) ;;
    daytona) keys=(DAYTONA_API_KEY) ;;
    vercel) keys=(VERCEL_TOKEN VERCEL_TEAM_ID VERCEL_PROJECT_ID) ;;
  esac
  literals=()
  for key in "${keys[@]}"; do literals+=(--from-literal="$key=replace-me-$(tr 'A-Z_' 'a-z-' <<<"$key")"); done
  echo ---
  secret "provider-$provider-credentials" "${literals[@]}"
done
