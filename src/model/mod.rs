//! Plain resource types shared by every role: node records as stored in the replicated
//! document, the node view the API serves (record + liveness from the local membership view),
//! the workload records (bindings, pod status) roles exchange through the documents, the
//! Secret rules (data keys, registry credentials out of docker config Secrets), and the pod-CIDR
//! allocator's pure core (`ipam`), and the pod network's shared names and addresses
//! (`network`).

pub mod ipam;
mod names;
pub mod network;
mod node;
pub mod quantity;
pub mod secret;
pub mod service;
pub mod workload;

pub use names::{is_dns1123_label, is_dns1123_subdomain};

pub use node::{NodeRecord, NodeSystemInfo, NodeView, Readiness, RuntimePressure, PRESSURE_KEY};
