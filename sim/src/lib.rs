//! sluice-sim: a deterministic fault-injection simulator for the sluice replication engine.
//!
//! From one seed it drives a SQLite workload (real SQLite on a simulated VFS), the real engine,
//! and a simulated object store through crashes, power loss with torn and lost writes, store
//! errors, partitions and application checkpoints; then it restores and checks the result
//! against an oracle. See `FAULT_MODEL.md` for exactly what is simulated and checked.

pub mod chaos;
pub mod disk;
pub mod faulty;
pub mod files;
pub mod knobs;
pub mod oracle;
pub mod plan;
pub mod run;
pub mod vfs;
