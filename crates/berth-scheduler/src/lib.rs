//! Pure placement engine.
