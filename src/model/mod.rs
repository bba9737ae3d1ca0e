//! Plain resource types shared by every role: node records as stored in the replicated
//! document, and the node view the API serves (record + liveness from the local membership view).

mod names;
mod node;

pub use names::{is_dns1123_label, is_dns1123_subdomain};

pub use node::{NodeRecord, NodeSystemInfo, NodeView, Readiness};
