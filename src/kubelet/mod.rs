//! The kubelet role: runs the pods whose winning binding names this node. A pure planner
//! (desired pods + observed runtime state + time → actions and status transitions) and the
//! shell loop that feeds it and carries its actions out through `crate::runtime`.
