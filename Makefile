# nodeagent — see README.md. `make demo` and `make test` are the two commands a new machine needs.
SHELL := /bin/bash
GO ?= go
BIN := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -s -w -X github.com/nodeagent/nodeagent/agent.Version=$(VERSION) -X github.com/nodeagent/nodeagent/agent.Commit=$(COMMIT)
E2E_TIMEOUT ?= 50m
# UNIT_TIMEOUT bounds each package's unit tests; cloud's fault matrix on every AWS call
# (5 s latencies, callers' deadlines) takes ~5 min of it.
UNIT_TIMEOUT ?= 20m
# grpcnotrace drops grpc's golang.org/x/net/trace (and with it html/template, whose run-time
# method calls keep every exported method alive): 86 MiB → 41 MiB stripped, same behaviour.
BUILD_TAGS ?= grpcnotrace
# No inlining in the generated (un)marshalling code of k8s.io/api's types and of the AWS
# service clients: their calls wait on the network, and inlined copies of that code cost
# ~1.1 MiB of binary (see README, "A lean binary").
GCFLAGS ?= -gcflags='k8s.io/api/...=-l' -gcflags='github.com/aws/aws-sdk-go-v2/service/...=-l'

.PHONY: all build deps test unit fuzz e2e e2e-parts bench demo lint clean size failpoints

# e2e-parts builds (once; all cached in /var/cache/nodeagent-e2e) the real parts the end-to-end
# tests run: the Debian rootfs the machines boot (and its copy with sshd for the Packer build), kubelet and the control plane (kube-apiserver,
# kube-controller-manager, kube-scheduler, kube-proxy) v1.34.4, etcd v3.5 and CoreDNS v1.15 from
# source through the Go module proxy, Debian's Docker Engine unpacked from its docker.io package
# (hack/docker.sh), and the image archives nodes import instead of pulling from a registry.
e2e-parts:
	hack/rootfs.sh >/dev/null
	hack/rootfs-packer.sh >/dev/null
	hack/build-k8s.sh >/dev/null
	hack/build-etcd.sh >/dev/null
	ETCD_PROGRAM=etcdutl hack/build-etcd.sh >/dev/null
	hack/build-coredns.sh >/dev/null
	hack/docker.sh >/dev/null
	$(GO) run ./hack/images -out /var/cache/nodeagent-e2e/images >/dev/null

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -tags '$(BUILD_TAGS)' $(GCFLAGS) -ldflags '$(LDFLAGS)' -o $(BIN)/nodeagent ./cmd/nodeagent
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/awsemu ./cmd/awsemu

# failpoints builds $(BIN)/nodeagent-failpoints: the agent with its gofail failpoints
# compiled in (from a throw-away copy of the tree; the release binary has none).
failpoints:
	hack/failpoints.sh $(BIN)/nodeagent-failpoints

# deps installs what the real-parts tests need on a fresh Debian 12 (root): nspawn, debootstrap,
# containerd/runc (their binaries are served as assets), loop-device and filesystem tools.
deps:
	hack/deps.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./...

unit:
	$(GO) test -race -count=1 -timeout $(UNIT_TIMEOUT) ./...
	$(MAKE) fuzz
	$(MAKE) size

# size fails when the agent binary grows past its budget (hack/binary-size.sh).
size: build
	hack/binary-size.sh $(BIN)/nodeagent

# fuzz runs each Go native fuzz target for a bounded time (FUZZTIME each); the
# committed corpus (testdata/fuzz) is also replayed by every plain `go test`.
FUZZTIME ?= 20s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzUserData$$' -fuzztime $(FUZZTIME) ./config/
	$(GO) test -run '^$$' -fuzz '^FuzzMerge$$' -fuzztime $(FUZZTIME) ./config/

# e2e boots real systemd machines (systemd-nspawn), real loop devices, network namespaces, a real
# kubelet built from source, all against the wire-level AWS emulator.
e2e: deps build failpoints e2e-parts
	# One package at a time: machines share the host's network (kubelet's ports).
	$(GO) test -tags e2e -count=1 -timeout $(E2E_TIMEOUT) -p 1 ./internal/nspawn/
	$(GO) test -tags e2e -count=1 -timeout $(E2E_TIMEOUT) -p 1 -run E2E ./systemd/... ./cri/ ./kubelet/ ./addons/
	$(GO) test -tags e2e -count=1 -timeout $(E2E_TIMEOUT) -run TestFullVarLib ./doctor/
	$(GO) test -tags e2e -count=1 -timeout $(E2E_TIMEOUT) -p 1 -run TestEtcdNeverLosesData ./etcdbackup/
	$(GO) test -tags e2e -count=1 -timeout $(E2E_TIMEOUT) -run TestDrain ./drain/
	$(GO) test -tags e2e -count=1 -timeout $(E2E_TIMEOUT) -v ./e2e/ -args -agent $(CURDIR)/$(BIN)/nodeagent -failpoint-agent $(CURDIR)/$(BIN)/nodeagent-failpoints

test: deps lint unit e2e

bench: deps build e2e-parts
	hack/bench.sh

demo: deps build e2e-parts
	$(GO) run ./hack/demo

clean:
	rm -rf $(BIN)
