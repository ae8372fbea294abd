//! sluice-core: the replication engine, the replica formats and the `sluice` CLI's library.

pub mod checksum;
pub mod ltx;
pub mod wal;
pub mod replica;
pub mod restore;
pub mod store;
