//! TODO: podinit (being written).
