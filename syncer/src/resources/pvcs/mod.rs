//! PersistentVolumeClaims (on by default, `--sync-persistentvolumeclaims=false` turns them
//! off), so that StatefulSets with volumeClaimTemplates and pods with generic ephemeral volumes
//! run.
//!
//! - **Virtual → host**: each virtual claim gets a host claim under the translated name, with
//!   our markers and the owner reference. `storageClassName` is kept or mapped by
//!   `--storage-class-map` (the host class must exist; none: the host's default class),
//!   `dataSource`/`dataSourceRef` naming a claim or a VolumeSnapshot of the same namespace is
//!   renamed, any other source (populators) is refused with a Warning Event and nothing is
//!   created, and `volumeName` is dropped when it names the
//!   volume vnest made for the claim (and refused otherwise). After the create only labels,
//!   annotations and a storage increase (resize) flow to the host: the rest of a claim's spec
//!   is immutable.
//! - **Host → virtual**: the host claim's status (phase, capacity, access modes, conditions,
//!   allocated resources), only when it differs. The virtual cluster runs without the PV
//!   binder, so once the host claim is Bound the syncer makes a **virtual PersistentVolume**
//!   `pvc-<virtual claim uid>` (capacity, access modes and volume mode of the host claim, the
//!   class by the tenant's name, the host volume's reclaim policy when it can be known from the
//!   host class (`--sync-storageclasses`), else Delete, a CSI stub source `host.vnest.dev` that reveals nothing of the host,
//!   label `vnest.dev/volume`, claimRef to the virtual claim; with `--pv-sync=real` a copy of
//!   the host PersistentVolume instead) and binds the virtual claim to it
//!   (`spec.volumeName`, `pv.kubernetes.io/bind-completed`). The volume is deleted (its
//!   finalizers removed) once its claim is gone.
//! - **Deletion**: a virtual claim deleted (or going) deletes the host claim (UID
//!   precondition). A host claim deleted out of band is created again while the virtual claim
//!   is not bound yet; once bound its data is gone: the virtual claim becomes `Lost` and the
//!   tenant gets a Warning Event `HostVolumeLost`, never a silent new, empty volume.
//! - Pods reference the host claims (`resources/pods/translate/volumes.rs`); a generic
//!   ephemeral volume becomes a reference to the host copy of the claim `<pod>-<volume>` the
//!   virtual ephemeral-volume controller makes, so the host's own controller never acts on it.

pub mod plan;
pub mod sync;
pub mod translate;

pub use sync::register;
pub use translate::ClassMap;

/// Flags of the PersistentVolumeClaim kind.
#[derive(Debug, Clone, clap::Args)]
pub struct PersistentVolumeClaimArgs {
    /// Copy virtual PersistentVolumeClaims to the host and bind them to virtual volumes that
    /// stand for the host's; `--sync-persistentvolumeclaims=false` turns it off (pods with
    /// claims then wait for claims that never appear on the host).
    #[arg(
        long,
        env = "VNEST_SYNC_PERSISTENTVOLUMECLAIMS",
        default_value_t = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
    )]
    pub sync_persistentvolumeclaims: bool,

    /// StorageClass names mapped for claims: `VIRTUAL=HOST[,VIRTUAL=HOST...]`. A claim naming
    /// VIRTUAL gets class HOST on the host; the tenant sees its own name on its volume (and a
    /// copied host class HOST under the name VIRTUAL, with `--sync-storageclasses`).
    #[arg(long, env = "VNEST_STORAGE_CLASS_MAP", default_value = "", value_parser = clap::value_parser!(ClassMap))]
    pub storage_class_map: ClassMap,

    /// Virtual PersistentVolumes: `fake` (a stub standing for the host volume; the namespaced
    /// Role suffices) or `real` (a copy of the host PersistentVolume: its source, node
    /// affinity, reclaim policy, mount options; needs read access to host PersistentVolumes,
    /// `components/real-volumes`).
    #[arg(long, env = "VNEST_PV_SYNC", value_enum, default_value = "fake")]
    pub pv_sync: PvSync,
}

/// How virtual PersistentVolumes stand for the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PvSync {
    Fake,
    Real,
}
