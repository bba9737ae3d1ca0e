//! End-to-end tests of issue 6 (probes); filled in by its work.
