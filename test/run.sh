#!/usr/bin/env bash
# The whole test suite, as README.md gives it: installs what it needs
# (Debian packages, FTP servers and clients), then runs gofmt, go build,
# go vet, the unit, fuzz-smoke, loopback-integration and namespace
# end-to-end tests.
# Needs root: the end-to-end tests create network namespaces and firewall
# rules (all removed again, also on failure).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

if [ "$(id -u)" != 0 ]; then
	echo "test/run.sh: run as root (sudo ./test/run.sh): the end-to-end tests need network namespaces" >&2
	exit 1
fi

echo "== installing test dependencies"
./test/deps.sh

echo "== gofmt, go build, go vet"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "not gofmt-ed:" $unformatted >&2
	exit 1
fi
# go vet compiles test files too: only go build notices a non-test file
# that needs one.
go build ./...
go vet ./...

# FTPALG_E2E=1: a missing prerequisite of an end-to-end test is a failure,
# never a skip.
export FTPALG_E2E=1

echo "== fuzz smoke (each parser target for 100,000 inputs, a few seconds)"
# A count, not a duration: with a wall-clock -fuzztime, Go 1.26's fuzzing
# coordinator can report its own deadline as a failure ("context deadline
# exceeded", no crasher written; golang/go#75804, fixed in Go 1.27).
for f in $(go test ./proxy/ftp -list '^Fuzz' | grep '^Fuzz'); do
	if ! out=$(go test ./proxy/ftp -run '^$' -fuzz "^${f}\$" -fuzztime 100000x 2>&1); then
		echo "FAIL $f"
		echo "$out"
		exit 1
	fi
	echo "ok   $f"
done

echo "== race detector on the relay (short mode)"
go test -count=1 -race -short ./proxy/... ./nat/... ./rules/...

echo "== all tests"
go test -count=1 -timeout 40m ./... 2>&1 | tee /tmp/ftpalg-test.log
