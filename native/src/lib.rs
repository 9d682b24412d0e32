//! Tally's aggregation core, native: decoding, dedup digests, matching,
//! grouping, period bucketing and accumulation, with no I/O.
//!
//! The pure core is plain Rust, tested by `cargo test`; `python` (built by
//! maturin as `tally._native`) is the small typed API Python sees
//! (src/tally/_native.pyi). Period bounds come from Python, the one source of
//! zone rules (periods.rs).

pub mod accum;
pub mod casefold;
pub mod copy;
pub mod deltas;
pub mod digest;
pub mod event;
pub mod index;
pub mod intern;
pub mod json;
pub mod metric;
pub mod number;
pub mod periods;
pub mod rows;
pub mod timestamp;

#[cfg(feature = "python")]
mod python;
