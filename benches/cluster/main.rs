//! Cluster benchmarks (change propagation, failure detection, idle cost); driven by `benches/run.sh`.

fn main() {}
