#!/usr/bin/env bash
# `make bench`: measures what SREs care about and prints the figures.
#  - a worker's bootstrap from a warm asset cache (as on a baked image), in a real
#    systemd machine: wall and CPU time of the agent, its peak RSS, the no-op re-run;
#  - the agent binary's size;
#  - asset cache verification throughput, etcd volume claim→mounted time over the
#    emulator's own attach latency, and the gossip ring at N = 100, 300, 1000 (2000 opt-in).
set -euo pipefail
cd "$(dirname "$0")/.."
hack/rootfs.sh >/dev/null
hack/build-k8s.sh >/dev/null

echo "== binary"
make --no-print-directory build >/dev/null
hack/binary-size.sh bin/nodeagent || true

echo "== worker bootstrap, warm cache (e2e, systemd-nspawn): per phase, boot overhead, no-op re-run, daemon idle"
# Under the e2e lock: other tests' CPU would be counted as boot time.
flock /tmp/nodeagent-e2e.lock go test -tags e2e -count=1 -run '^$' -bench BenchmarkBootstrap -benchtime 1x ./e2e/ -args -agent "$PWD/bin/nodeagent" | grep -E 'FIGURE|Benchmark|ok|FAIL'

echo "== assets: warm-cache verification; a converged reconcile with ~150 MB installed"
out=$(go test -count=1 -run '^$' -bench . -benchtime 3x ./assets/ | grep -E 'Benchmark|ok|FAIL')
echo "$out"
echo "$out" | awk '/^BenchmarkConvergedRun\/recorded/ {printf "FIGURE assets phase, converged run (recorded hashes trusted): %.1f ms   target <= 100 ms\n", $3/1e6}
  /^BenchmarkConvergedRun\/full/ {printf "FIGURE assets phase, converged run with the daily full re-hash: %.0f ms\n", $3/1e6}'

echo "== pki: issue a control plane's certificates, and a converged check"
go test -count=1 -run '^$' -bench . -benchtime 3x ./pki/ | grep -E 'Benchmark|ok|FAIL'

echo "== volumes: claim → mounted over the emulator's attach latency"
go test -count=1 -run '^$' -bench BenchmarkClaim -benchtime 3x ./volumes/ | grep -E 'Benchmark|ok|FAIL'

echo "== HA control plane: three masters in three zones, a worker, a master replaced (e2e, machines in network namespaces)"
# Targets: masters → quorum and API well inside the lifecycle hook's default hour; a
# replaced master's members healthy with quorum never lost; the cluster fits a 2-core, 24 GB box.
go test -tags e2e -count=1 -timeout 40m -run 'TestHAControlPlane/masters_started_one_by_one' -v ./e2e/ \
  -args -agent "$PWD/bin/nodeagent" | grep -E 'FIGURE|^(--- |ok|FAIL)' | sed 's/^ *ha_test.go:[0-9]*: FIGURE /HA: /'

echo "== etcd backups: snapshot + multipart upload to the S3 emulator, and restore (real etcd 3.5.35)"
# Targets: an hourly backup of a 1 GB keyspace takes well under its hour; a restore within minutes.
go test -tags e2e -count=1 -run '^$' -bench BenchmarkBackup -benchtime 1x -timeout 40m ./etcdbackup/ \
  -backup.sizes "${ETCD_BACKUP_MB:-100,1000}" | grep -E '^FIGURE|^(ok|FAIL)'

echo "== gossip ring at scale (in-process agents; N/k = every timer dilated k times, figures projected to real time)"
# Time dilation separates the protocol from this machine's two cores: N/k runs N agents
# with every timer (memberlist's and the agent's own) ×k, and reports durations ÷k and
# bytes and CPU per second ×k. k must be large enough that the agents' CPU fits the
# machine: a run whose process was kept off the CPU for half a (dilated) probe timeout is
# flagged CPU-BOUND (its figures measure the machine, not the ring). Run under the e2e
# lock so that other tests' CPU does not distort the figures. Targets at N=1000:
# converge, join, ready and dead-known <= 5 s; <= 2 KB/s and <= 1 % of a core per agent.
# Join, ready, dead and the steady bytes are measured once memberlist's re-gossip queues
# are empty and the formation exchanges are over (regossip= is how long that took).
#
# 1. The method, validated where both fit: N=100 undilated and at k=4, each
#    run GOSSIP_REPEAT times; a COMPARE line per N sets the medians (over the runs not
#    CPU-BOUND) side by side with the difference and a verdict per figure (within 20 %).
#    N=300 undilated fits two cores started 10 a second (N@B; not at once, nor 50 a
#    second: its re-gossip then kept both cores busy and never drained), so the pair runs
#    300@10 and 300/4@10 (~1 and ~3.5 min a run). Every agent starts at a random moment within
#    one (dilated) gossip interval, as booting nodes do (memberlist's own tickers would otherwise
#    run in lockstep: README). CPU per agent does not project in one process (sparse events each
#    cost a thread wake-up of their own); BenchmarkRingProcesses below validates and measures a
#    node's CPU with one agent per process.
gossip_ring() {
  flock /tmp/nodeagent-e2e.lock go test -count=1 -run '^$' -bench '^BenchmarkRing$' -benchtime 1x -timeout 90m ./gossip/ \
    -scale.window "${GOSSIP_WINDOW:-20s}" "$@" |
    grep -E '^SCALE|^DILATED|^COMPARE|^RING-BACKLOG|^Benchmark|not within|^(ok|FAIL)' |
    awk '{print} /^SCALE / {printf "FIGURE gossip %s %s: %s %s %s %s %s %s (after the formation'"'"'s re-gossip: %s %s%s%s)   targets (N=1000) <= 5s each, <= 2000B/s, <= 1%%\n", $2, $3, $4, $5, $6, $7, $8, $9, $11, $12, (/UNDRAINED/ ? ", UNDRAINED" : ""), (/CPU-BOUND/ ? ", CPU-BOUND" : "")}' || true
}
#    The window is protocol time here (-scale.protocolwindow: 80 s real at k=4), so both runs
#    of a pair count bytes and CPU over the same rounds and as many collections.
gossip_ring -scale.n "${GOSSIP_N:-100,100/4,300@10,300/4@10}" -scale.repeat "${GOSSIP_REPEAT:-3}" -scale.protocolwindow
# 2. All at once, dilated only: N=300 at k=4 and N=1000 at k=32 (k=8 and 16 stalled for
#    40-50 s while N=1000 formed). One run each (N=1000/32 took ~9 min at stop 11; stop
#    12's re-run had a killed node still held alive by some agents: see README).
gossip_ring -scale.n "${GOSSIP_SCALE_N:-300/4,1000/32}"
# 3. N=2000 (opt-in: ~14 GB and ~40 min): GOSSIP_2000=2000/64@200 hack/bench.sh starts 200 a
#    (dilated) second; all at once (2000/64) does not fit this machine. Its re-gossip took 16 min
#    to drain on 1 Dec (15 s projected), longer than the default wait, hence -scale.drainmax.
if [ -n "${GOSSIP_2000:-}" ]; then
  gossip_ring -scale.n "$GOSSIP_2000" -scale.memlimit $((16 << 30)) -scale.drainmax 45m
fi
# Its formation alone (a few minutes): GOSSIP_FORM=2000/64 hack/bench.sh.
if [ -n "${GOSSIP_FORM:-}" ]; then
  flock /tmp/nodeagent-e2e.lock go test -count=1 -run '^$' -bench '^BenchmarkRing$' -benchtime 1x -timeout 60m ./gossip/ \
    -scale.n "$GOSSIP_FORM" -scale.formonly -scale.memlimit $((12 << 30)) | grep -E '^FORMED|not within|^(ok|FAIL)' | sed 's/^FORMED/FIGURE gossip formation/' || true
fi

echo "== gossip ring of real processes (one agent per process and network namespace; RSS and CPU from /proc)"
# What a node pays: each agent a process of its own, as sparse as a real node, on a lab
# built as a VPC (netns.AsVPC: jumbo links, nothing flooded). N=200 undilated, 4 started a
# second (~2 min), is the measured figure; N=200 at k=4 (~5 min) and k=32 (~4.5 min) show how
# far a dilated projection over-states CPU (PROCS-COMPARE); N=1000 at k=32, 50 started a
# (dilated) second (~19 min, ~10 GB: one /16 lab over chained bridges, internal/netns) gets a
# PROCS-ESTIMATE of its undilated CPU from that factor. 500@3:10 measures 10 processes
# undilated among 490 agents hosted by one ringhost process (~5 min): a ring larger than
# two cores run one process per node, measured without dilation; PROCS-BYN fits the
# undilated CPU per process against N and estimates N=1000's by that fit (one process
# hosting more than ~500 undilated agents, or 500 started faster, collapses while forming here). PROCS-LOG sums
# up the agents' warnings; -procs.trace 20s prints the formation as the hosts files show it.
# N=1000 at k=8 or 16 does not fit two cores while forming. A run during which this machine
# was 90 % busy is CPU-BOUND. Targets: RSS <= 30 MiB, <= 1 % of a core per process.
flock /tmp/nodeagent-e2e.lock go test -count=1 -run '^$' -bench BenchmarkRingProcesses -benchtime 1x -timeout 60m ./gossip/ \
  -procs.n "${GOSSIP_PROCS:-200@4,200/4@4,200/32@50,500@3:10,1000/32@50}" -procs.window 30s -procs.windows 2 |
  grep -E '^PROCS|^Benchmark|not within|^(ok|FAIL)' | sed 's/^PROCS /FIGURE gossip processes (targets: RSS <= 30 MiB, cpu <= 1 %) /' || true
