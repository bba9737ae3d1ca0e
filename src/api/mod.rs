//! The Kubernetes-shaped HTTPS API every agent serves (discovery, Tables, nodes, generic
//! namespaced objects, backup), with bearer-token auth on every route and body limits.

mod backend;

pub use backend::{AgentStatus, Backend, BackendError, MemberStatus, ObjectKey};
