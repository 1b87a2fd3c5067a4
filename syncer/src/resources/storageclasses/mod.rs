//! StorageClasses, host → virtual (off by default: `--sync-storageclasses`, which needs read
//! access to the host's StorageClasses, e.g. `manifests/components/host-storageclasses`), so
//! that tenants see and can name the classes the host has.
//!
//! - Each host class is copied into the virtual cluster under the tenant's name of it (its own
//!   name, or the virtual name `--storage-class-map` maps to it), with label
//!   `vnest.dev/host-storageclass`: provisioner, parameters, reclaim policy, binding mode,
//!   volume expansion, mount options, allowed topologies and the default-class annotation.
//! - A host change is copied: the mutable fields by a patch; a change of an immutable field
//!   (provisioner, parameters, reclaim policy, binding mode) deletes the copy, and the next
//!   pass creates it again. A host class deleted deletes its copy.
//! - A class the tenant made (no label) is never touched, also when a host class has its name.
//! - Off, nothing is copied and a claim naming a class (or none: the host's default) still
//!   works: the class name goes to the host as it is (or mapped).

pub mod plan;
pub mod sync;
pub mod translate;

pub use sync::{HostClassCache, register};

/// Flags of the StorageClass kind.
#[derive(Debug, Clone, clap::Args)]
pub struct StorageClassArgs {
    /// Copy the host's StorageClasses into the virtual cluster (read-only for the tenant's
    /// purposes; needs read access to host StorageClasses: `components/host-storageclasses`).
    #[arg(
        long,
        env = "VNEST_SYNC_STORAGECLASSES",
        default_value_t = false,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
    )]
    pub sync_storageclasses: bool,
}
