//! Scheduling decisions (pure): the per-epoch scheduler leader; placement and controllers live here too.

pub mod leader;
