//! TODO: volumes (being written).
