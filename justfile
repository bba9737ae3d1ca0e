# shoal — common tasks. `just up` starts a local 3-node testnet, `just test` runs everything.

set shell := ["bash", "-euo", "pipefail", "-c"]

kubeconfig := justfile_directory() / "testnet/run/kubeconfig"

# List the recipes.
default:
    @just --list

# Build the release binary.
build:
    cargo build --release

# Install missing prerequisites, build, start a 3-node testnet and deploy the demo app on it.
up: prereqs build
    testnet/up.sh 3
    kubectl --kubeconfig {{kubeconfig}} get nodes -o wide
    kubectl --kubeconfig {{kubeconfig}} apply -f testnet/demo.yaml
    kubectl --kubeconfig {{kubeconfig}} rollout status deploy/hello --timeout=120s
    kubectl --kubeconfig {{kubeconfig}} get deploy,rs,pods -o wide
    kubectl --kubeconfig {{kubeconfig}} get svc,endpoints hello
    @echo "--- the Service from the host, through NodePort 30080 on n1 (the kernel spreads connections):"
    @for i in $(seq 50); do curl -sf --max-time 2 http://10.77.0.11:30080/ >/dev/null && break; sleep 0.2; done
    @for i in 1 2 3 4 5 6; do curl -sS --max-time 2 http://10.77.0.11:30080/; done
    @echo
    @echo "Use it:  export KUBECONFIG={{kubeconfig}}"
    @echo "         curl http://10.77.0.12:30080/              # the Service answers on every node's NodePort"
    @echo "         kubectl exec deploy/hello -- wget -qO- http://hello   # from a pod: DNS name -> ClusterIP"
    @echo "         kubectl exec -it deploy/hello -- sh       # a shell in a replica"
    @echo "         kubectl get pods -o wide -w               # watch the demo (NODE column); Ctrl-C to stop"
    @echo "         kubectl logs deploy/hello -f              # one replica's log"
    @echo "         kubectl scale deploy/hello --replicas=9   # scale it"
    @echo "         kubectl set env deploy/hello GREETING=hola; kubectl rollout status deploy/hello   # a rolling update"
    @echo "         kubectl rollout undo deploy/hello         # and back"
    @echo "         just kill n2                              # kill a node under it: replicas move in seconds"
    @echo "         just start n2                             # it comes back; the count returns to exactly 9"
    @echo "         kubectl --context n3 get pods             # any node answers"
    @echo "Stop it: just down"

# Tear the testnet down (leaves nothing behind).
down:
    testnet/down.sh

# The end-to-end layer needs root, runc, iproute2 and kubectl (packages installed when missing).
# The whole suite: unit/property/simulator/integration layers, then end-to-end on a netns testnet.
test: prereqs
    cargo build --release
    # Everything but the end-to-end layer (its tests live in `mod e2e` of tests/e2e.rs).
    cargo test --release -- --skip e2e::
    cargo test --release --test e2e -- --test-threads=1

# Install missing testnet prerequisites (apt-get), fail if any cannot be had.
prereqs:
    testnet/prereqs.sh

# Start an N-node testnet (tears down a running one first).
testnet-up N="3": prereqs build
    testnet/up.sh {{N}}

# Same as `just down`.
testnet-down:
    testnet/down.sh

# The host NODE dies (SIGKILL of its whole cgroup).
kill NODE:
    testnet/kill.sh {{NODE}}

# Boot NODE again from its data dir.
start NODE:
    testnet/start.sh {{NODE}}

# Restart only NODE's agent; what it runs keeps running.
restart NODE:
    testnet/restart.sh {{NODE}}

# Roll the freshly built binary (or NEW_BIN) over every testnet node, one at a time, without
# failing pods over: planned restart (SIGTERM), new binary, wait Ready and in sync, next node.
upgrade *NODES: build
    testnet/upgrade.sh {{NODES}}

# The host NODE hangs: SIGSTOP every process of its cgroup.
stop NODE:
    testnet/stop.sh {{NODE}}

# Resume a stopped NODE (SIGCONT).
cont NODE:
    testnet/cont.sh {{NODE}}

# Drop all traffic between two groups, e.g. just partition "n1 n2" "n3".
partition A B:
    testnet/partition.sh "{{A}}" "{{B}}"

# Remove every partition.
heal:
    testnet/heal.sh

# benches/run.sh is maintained with the benchmarks; figures go to docs/benchmarks.md.
# Benchmarks: propagation, failure detection, idle cost, state under churn.
bench: build
    benches/run.sh

# Format the code.
fmt:
    cargo fmt --all

# rustfmt check and clippy with warnings as errors.
lint:
    cargo fmt --all -- --check
    cargo clippy --release --all-targets -- -D warnings
