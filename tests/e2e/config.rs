//! End-to-end tests of issue 6 (config); filled in by its work.
