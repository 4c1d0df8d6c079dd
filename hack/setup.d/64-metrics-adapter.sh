# shellcheck shell=bash
# metrics-adapter (tests/tools/metrics-adapter): a custom metrics API server built on
# sigs.k8s.io/custom-metrics-apiserver (the library prometheus-adapter is built on, which the Go
# module proxy here does not serve) that answers docs/autoscaling.md's prometheus-adapter rule from
# a real Prometheus, so the real HorizontalPodAutoscaler controller scales on connections. Built
# from Go modules once per go.sum and source, cached outside the checkout:
#   $CHATCLUSTER_CACHE/metrics-adapter-cma-v1.36.0/bin/metrics-adapter
# Exports CHATCLUSTER_METRICS_ADAPTER (the binary).
CHATCLUSTER_CMA_VERSION=v1.36.0 # sigs.k8s.io/custom-metrics-apiserver, kept equal to its go.mod

_metrics_adapter_bin="$CHATCLUSTER_CACHE/metrics-adapter-cma-$CHATCLUSTER_CMA_VERSION/bin"
go_build_local metrics-adapter "$REPO_ROOT/tests/tools/metrics-adapter" "$_metrics_adapter_bin"
export CHATCLUSTER_METRICS_ADAPTER="$_metrics_adapter_bin/metrics-adapter"
