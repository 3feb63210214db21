//! Virtual machines: `.vmx` configurations and the stored description of
//! a backed-up VM (configuration summary, disks and their maps).

pub mod description;
pub mod vmx;
