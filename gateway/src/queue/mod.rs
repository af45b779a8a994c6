//! The embedded queue and writer: the `BatchQueue` (`tracegate_pipeline`) a gateway without
//! `[kafka]` publishes to, joined in one process to the sinks it hands groups to.

pub mod dedup;
pub mod embedded;
pub mod journal;
