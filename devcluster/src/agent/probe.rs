//! TODO: probe (being written).
