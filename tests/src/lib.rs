//! The harness the end-to-end tests share.
