# shellcheck shell=bash
# The CRDs of Argo CD's Application and Flux's GitRepository/Kustomization, so the chart tests can
# apply examples/argocd and examples/flux with `--dry-run=server` against their real schemas.
# (Argo CD and Flux themselves do not run in the tests.) They are taken from those projects' Go
# modules, as released, through the Go module proxy (`go mod download`), once per version, into
#   $CHATCLUSTER_CACHE/gitops-crds-<versions>/*.yaml
# Exports CHATCLUSTER_GITOPS_CRDS (that folder).
gitops_crds() {
    local argocd=v3.6.1 flux_kustomize=v1.9.0 flux_source=v1.9.0
    local dir="$CHATCLUSTER_CACHE/gitops-crds-argocd-$argocd-flux-$flux_kustomize-$flux_source"
    if [ ! -f "$dir/.done" ]; then
        command -v go >/dev/null 2>&1 || die "Go is needed to fetch the Argo CD / Flux CRDs"
        command -v unzip >/dev/null 2>&1 || apt_install unzip
        log "fetching the Argo CD $argocd and Flux CRDs from their Go modules into $dir"
        mkdir -p "$dir"
        local spec module version member zip
        for spec in \
            "github.com/argoproj/argo-cd/v3 $argocd manifests/crds/application-crd.yaml" \
            "github.com/fluxcd/source-controller $flux_source config/crd/bases/source.toolkit.fluxcd.io_gitrepositories.yaml" \
            "github.com/fluxcd/kustomize-controller $flux_kustomize config/crd/bases/kustomize.toolkit.fluxcd.io_kustomizations.yaml"; do
            read -r module version member <<<"$spec"
            # `go mod download` fetches and verifies (go.sum database) the module zip; it may
            # still exit non-zero when the module needs a newer Go to *build*, which we do not do.
            zip="$( (GOFLAGS=-mod=mod GOTOOLCHAIN=local go mod download -json "$module@$version" 2>/dev/null || true) |
                sed -n 's/^[[:space:]]*"Zip": "\(.*\)",\{0,1\}$/\1/p')"
            [ -f "$zip" ] || die "could not download the Go module $module@$version"
            unzip -p "$zip" "$module@$version/$member" >"$dir/$(basename "$member")"
            [ -s "$dir/$(basename "$member")" ] || die "$member missing in $module@$version"
        done
        touch "$dir/.done"
    fi
    export CHATCLUSTER_GITOPS_CRDS="$dir"
}
gitops_crds
