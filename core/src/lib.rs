//! sluice-core: the replication engine, the replica formats and the `sluice` CLI's library.

pub mod args;
pub mod checksum;
pub mod cli;
pub mod compact;
pub mod config;
pub mod counting;
pub mod daemon;
pub mod demo;
pub mod engine;
pub mod jobs;
pub mod lease;
pub mod ltx;
pub mod metrics;
pub mod place;
pub mod planted;
pub mod replica;
pub mod replicate;
pub mod restore;
pub mod s3;
pub mod scheduler;
pub mod scratch;
pub mod store;
pub mod url;
pub mod verify;
pub mod wal;
