//! Plain resource types shared by every role: node records as stored in the replicated
//! document, and the node view the API serves (record + liveness from the local membership view).

mod node;

pub use node::{NodeRecord, NodeSystemInfo, NodeView, Readiness};
