//! End-to-end tests of issue 6 (rollout); filled in by its work.
