//! A fake cluster for unit tests of the executor.
