//! Sweeps over (width, max bias, size, restart).
pub fn placeholder() {}
