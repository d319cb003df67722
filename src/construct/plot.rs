//! Figures: decision regions of each layer-2 neuron on 2-D data, and sweep heatmaps.

use super::Network;
use crate::data::Dataset;
use anyhow::{bail, Result};
use std::path::Path;
pub fn decision_regions(_net: &Network, _ds: &Dataset, _path: &Path) -> Result<()> {
    bail!("plotting is not available yet")
}
