//! TODO: controlplane (being written).
