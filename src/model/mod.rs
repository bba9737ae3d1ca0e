//! Plain resource types and pure rules shared by every role — the lowest layer, importing no
//! other module of the crate: node records as stored in the replicated document, the node view
//! the API serves (record + liveness from the local membership view), the workload records
//! (bindings, pod status) roles exchange through the documents, the Secret rules (data keys,
//! registry credentials out of docker config Secrets), the pod-CIDR allocator's pure core
//! (`ipam`), the pod network's shared names and addresses (`network`), image values and
//! references (`image`, `reference`), log requests (`logs`), what the runtime observes of a pod (`observed`), a container's resolved env and volumes
//! (`container`), securityContext rules
//! (`security_context`), label selectors (`selector`), back-off (`backoff`) and stable hashes
//! (`hash`).

pub mod backoff;
pub mod container;
pub mod hash;
pub mod image;
pub mod ipam;
pub mod logs;
mod names;
pub mod network;
mod node;
pub mod observed;
pub mod quantity;
pub mod reference;
pub mod secret;
pub mod security_context;
pub mod selector;
pub mod service;
pub mod workload;

pub use names::{is_dns1123_label, is_dns1123_subdomain};

pub use node::{
    MemberState, MemberStatus, NodeRecord, NodeSystemInfo, NodeView, Readiness, RuntimePressure,
    PRESSURE_KEY,
};
