# shellcheck shell=bash
# kstatus-check (tests/tools/kstatus): a tiny Go program around the kstatus library
# (sigs.k8s.io/cli-utils/pkg/kstatus/status, what Flux's health checks and Helm 4's --wait use), so
# the tests ask the real library whether a ChatCluster is Current, InProgress or Failed. Built from
# Go modules once per go.sum, cached outside the checkout:
#   $CHATCLUSTER_CACHE/kstatus-cli-utils-v0.37.2/bin/kstatus-check
# Exports CHATCLUSTER_KSTATUS (the binary).
CHATCLUSTER_KSTATUS_VERSION=v0.37.2 # sigs.k8s.io/cli-utils, kept equal to tests/tools/kstatus/go.mod

_kstatus_bin="$CHATCLUSTER_CACHE/kstatus-cli-utils-$CHATCLUSTER_KSTATUS_VERSION/bin"
go_build_local kstatus-check "$REPO_ROOT/tests/tools/kstatus" "$_kstatus_bin"
export CHATCLUSTER_KSTATUS="$_kstatus_bin/kstatus-check"
