//! Helpers for the end-to-end tests: where the built binary and the built
//! sample rules are.
