//! sluice-core: the replication engine, the replica formats and the `sluice` CLI's library.

pub mod checksum;
pub mod cli;
pub mod config;
pub mod ltx;
pub mod replica;
pub mod restore;
pub mod store;
pub mod url;
pub mod wal;
