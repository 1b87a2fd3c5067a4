//! Pods: virtual -> host at create, mutable fields after, status and node binding back.

pub mod refs;
pub mod sync;
pub mod translate;
