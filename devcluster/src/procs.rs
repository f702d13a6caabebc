//! TODO: procs (being written).
