# The two commands of the README. Everything else is in hack/.
.PHONY: run test generate images
run:  ## start the local sandbox (see README)
	./hack/run.sh
test: ## run every test (lints, unit, integration, end-to-end)
	./hack/test.sh
generate: ## regenerate committed generated files (CRDs, chart CRDs, schemas)
	./hack/generate.sh
images: ## build the container images offline into target/images (OCI archives + docker build contexts)
	./hack/images.sh
