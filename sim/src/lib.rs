//! Deterministic fault-injection simulator for sluice (see issue: simulator). Empty until the
//! engine's seams land.
