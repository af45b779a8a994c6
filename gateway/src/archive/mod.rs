//! `tracegate archive` (`cmd`: ls, cat, replay, keys) and the replay of archived groups to
//! ClickHouse with their original deduplication tokens (`replay`). The archive itself (formats,
//! keys, stores, its sink) is the `tracegate_archive` crate.

pub mod cmd;
pub mod replay;
