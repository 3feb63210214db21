//! Which kind of disk image a disk was read from: recorded in the VM
//! description (so a restore can write the same kind back) and named by
//! VMDK descriptors' `createType`.

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum DiskFormat {
    Raw,
    MonolithicSparse,
    TwoGbMaxExtentSparse,
    MonolithicFlat,
    TwoGbMaxExtentFlat,
    StreamOptimized,
    Vmfs,
}

impl DiskFormat {
    /// The format a VMDK descriptor's `createType` names.
    pub fn from_create_type(create_type: &str) -> Option<Self> {
        Some(match create_type {
            "monolithicSparse" => DiskFormat::MonolithicSparse,
            "twoGbMaxExtentSparse" => DiskFormat::TwoGbMaxExtentSparse,
            "monolithicFlat" => DiskFormat::MonolithicFlat,
            "twoGbMaxExtentFlat" => DiskFormat::TwoGbMaxExtentFlat,
            "streamOptimized" => DiskFormat::StreamOptimized,
            "vmfs" => DiskFormat::Vmfs,
            _ => return None,
        })
    }
}
