//! Plain resource types and pure rules shared by every role — the lowest layer, importing no
//! other module of the crate: node records as stored in the replicated document, the node view
//! the API serves (record + liveness from the local membership view), the workload records
//! (bindings, pod status) roles exchange through the documents, the Secret rules (data keys,
//! registry credentials out of docker config Secrets), the pod-CIDR allocator's pure core
//! (`ipam`), the pod network's shared names and addresses (`network`), image values and
//! references (`image`, `reference`), log requests (`logs`), what the runtime observes of a pod (`observed`), a container's resolved env and volumes
//! (`container`), securityContext rules
//! (`security_context`), label and node selectors (`selector`), admission checks of scheduling constraints (`affinity`), back-off (`backoff`), stable hashes
//! (`hash`), and node taints with pod tolerations (`taint`).

pub mod affinity;
pub mod backoff;
pub mod container;
pub mod downward;
pub mod hash;
pub mod host_port;
pub mod image;
pub mod ipam;
pub mod logs;
mod names;
pub mod network;
mod node;
pub mod observed;
pub mod pod_security;
pub mod quantity;
pub mod reference;
pub mod secret;
pub mod security_context;
pub mod selector;
pub mod service;
pub mod storage;
pub mod taint;
pub mod workload;

pub use names::{is_dns1123_label, is_dns1123_subdomain, is_label_value, is_qualified_name};

pub use node::{
    with_user_labels, MemberState, MemberStatus, NodeRecord, NodeSettings, NodeSystemInfo,
    NodeView, Readiness, RestartHold, RuntimePressure, NODE_SETTINGS, PRESSURE_KEY,
    RESTART_HOLD_KEY,
};
