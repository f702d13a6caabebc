//! TODO: runtime (being written).
