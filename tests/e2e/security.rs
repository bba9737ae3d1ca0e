//! End-to-end tests of issue 6 (security); filled in by its work.
