//! Services: the same ClusterIP on both sides, node ports and LoadBalancer status back, the
//! virtual `default/kubernetes` kept pointing at the vcluster.

pub mod plan;
pub mod register;
pub mod sync;
pub mod translate;

pub use register::register;
