//! Plain resource types shared by every role: node records as stored in the replicated
//! document, the node view the API serves (record + liveness from the local membership view),
//! and the workload records (bindings, pod status) roles exchange through the documents.

mod names;
mod node;
pub mod quantity;
pub mod workload;

pub use names::{is_dns1123_label, is_dns1123_subdomain};

pub use node::{NodeRecord, NodeSystemInfo, NodeView, Readiness};
