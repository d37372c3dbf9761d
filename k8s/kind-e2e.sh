#!/usr/bin/env bash
# From nothing to a finished batch on a local kind cluster.
#
# NOT RUN HERE: the machines this project is developed and tested on have no kind and no
# Kubernetes cluster. What the cluster would run is tested there instead (tests/chart,
# tests/containers: the rendered chart validated against the real schemas, its Serve config
# deployed on a local Ray, its worker command and these Jobs run as processes, both images built
# and run on a real Docker engine). This script is for you to run on your own machine.
#
# Needs: docker, kind, kubectl, helm (3 or 4); about 4 CPUs and 10 GiB of memory for Docker.
# Steps: create the cluster, build and load both images, install KubeRay's operator, install the
# chart (with the Temporal dev server), wait for the RayService to be Ready, run the submit Job,
# wait for it, print its summary.
#
#   k8s/kind-e2e.sh            # run everything
#   DELETE=1 k8s/kind-e2e.sh   # ... and delete the cluster at the end (default: keep it)
set -euo pipefail

CLUSTER=${CLUSTER:-batch-inference}
RELEASE=batch-inference            # the Jobs in k8s/ expect this release name
NAMESPACE=${NAMESPACE:-default}
KUBERAY_VERSION=1.7.0              # the operator version the chart was validated against
cd "$(dirname "$0")/.."
VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/batch-inference/Chart.yaml)
CTX="kind-${CLUSTER}"
k() { kubectl --context "$CTX" -n "$NAMESPACE" "$@"; }
step() { printf '\n==> %s\n' "$*"; }

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done

step "kind cluster ${CLUSTER}"
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --config k8s/kind-config.yaml
kubectl --context "$CTX" create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl --context "$CTX" apply -f -

step "build and load images (tag ${VERSION})"
docker build -f Dockerfile.worker -t "batch-inference-worker:${VERSION}" .
docker build -f Dockerfile.serve -t "batch-inference-serve:${VERSION}" .
kind load docker-image --name "$CLUSTER" "batch-inference-worker:${VERSION}" "batch-inference-serve:${VERSION}"

step "KubeRay operator ${KUBERAY_VERSION}"
helm repo add kuberay https://ray-project.github.io/kuberay-helm/ >/dev/null
helm repo update kuberay >/dev/null
helm upgrade --install kuberay-operator kuberay/kuberay-operator --version "$KUBERAY_VERSION" \
  --kube-context "$CTX" --namespace kuberay-system --create-namespace --wait --timeout 5m

step "shared data volume for inputs/outputs (single node: ReadWriteOnce is enough)"
k apply -f - <<'YAML'
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: batch-data
spec:
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 1Gi
YAML

step "chart ${RELEASE} (k8s/kind-values.yaml: Temporal dev server, data PVC, laptop-sized Ray)"
helm upgrade --install "$RELEASE" charts/batch-inference --kube-context "$CTX" --namespace "$NAMESPACE" \
  -f k8s/kind-values.yaml --wait --timeout 10m

step "wait for the RayService to be Ready (Ray start + Serve deploy)"
k wait --for=condition=Ready "rayservice/${RELEASE}" --timeout=20m
k get rayservice "$RELEASE"
k rollout status "deployment/${RELEASE}-worker" --timeout=5m

step "submit a batch with the CLI Job and wait for it"
k delete -f k8s/job-submit-cli.yaml --ignore-not-found --wait
k apply -f k8s/job-submit-cli.yaml
# Complete or Failed, whichever comes first.
k wait --for=condition=Complete job/batch-inference-submit --timeout=30m &
complete=$!
k wait --for=condition=Failed job/batch-inference-submit --timeout=30m &
failed=$!
wait -n "$complete" "$failed" || true
kill "$complete" "$failed" 2>/dev/null || true

step "summary"
k logs job/batch-inference-submit --tail=40
status=$(k get job batch-inference-submit -o jsonpath='{.status.succeeded}')
if [ "$status" = "1" ]; then
  echo "batch finished: outputs under /data/out/batch-inference-submit on PVC batch-data"
else
  echo "batch Job did not succeed; see: kubectl --context $CTX -n $NAMESPACE describe job batch-inference-submit" >&2
  exit 1
fi

if [ "${DELETE:-0}" = "1" ]; then
  step "delete cluster"
  kind delete cluster --name "$CLUSTER"
fi
