//! The archive: a documented, versioned, compressed object format (`format`), durable local
//! file writes (`fsutil`), the local-directory store (`local`) and the reader behind
//! `tracegate archive cat`.

pub mod format;
pub mod fsutil;
pub mod local;
