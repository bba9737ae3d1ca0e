//! Container execution on this node: the node-local image store (`image`), OCI bundles, the
//! runc driver, and the per-container monitor (`shim`) and per-pod sandbox processes that
//! outlive the agent. Shell code: the decisions are made by `crate::kubelet`'s pure planner.

pub mod image;
