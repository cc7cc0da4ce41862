//! Binary analysis: what a Go executable is and where to probe it.

pub mod goelf;
pub mod target;
