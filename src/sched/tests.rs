//! Property tests of the reconcile.
